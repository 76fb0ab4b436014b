"""Tests for mmpool.stream.games on its own: GameKey's spec parsing and checks against the catalog's fields, and
its count of games per batch against an independent numpy count (np.unique over rows).

The statistics a stream reports with it (games per batch, the largest game) are tested in test_mixing.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmpool.errors import ConfigError
from mmpool.stream.games import GameKey
from mmpool.testing.synthetic import katago_rows

FIELDS = {
    "game_id": (np.dtype(np.int64), ()),
    "globalTargetsNC": (np.dtype(np.float32), (80,)),
    "board": (np.dtype(np.uint8), (2, 3, 4)),
}


def reference(key: np.ndarray) -> tuple[int, int]:
    """(distinct rows, count of the most frequent row) of a 2-d key, by np.unique over rows."""
    _, counts = np.unique(key.reshape(len(key), -1), axis=0, return_counts=True)
    return len(counts), int(counts.max())


@pytest.mark.parametrize(
    ("spec", "name", "start", "stop"),
    [
        ("game_id", "game_id", 0, 1),
        ("globalTargetsNC", "globalTargetsNC", 0, 80),
        ("globalTargetsNC[41:47]", "globalTargetsNC", 41, 47),
        ("  globalTargetsNC [ 41 : 47 ]  ", "globalTargetsNC", 41, 47),
        ("board[0:24]", "board", 0, 24),
        ("board[23:24]", "board", 23, 24),
    ],
)
def test_a_spec_names_a_field_and_a_range_of_its_flattened_values(spec, name, start, stop) -> None:
    key = GameKey(spec, FIELDS)
    assert (key.spec, key.name, key.start, key.stop) == (spec, name, start, stop)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", r"game_field='': give a field name or a range of one, such as 'game_id'"),
        ("globalTargetsNC[41:]", r"game_field='globalTargetsNC\[41:\]': give a field name or a range of one"),
        ("globalTargetsNC[-1:3]", r"game_field='globalTargetsNC\[-1:3\]': give a field name"),
        ("game id", r"game_field='game id': give a field name"),
        ("a[1:2][3:4]", r"give a field name or a range of one"),
        (None, r"game_field=None: give a field name"),
        (7, r"game_field=7: give a field name"),
        ("gameid", r"game_field='gameid': no field 'gameid'; the data has game_id, globalTargetsNC, board"),
        ("wdl[0:3]", r"game_field='wdl\[0:3\]': no field 'wdl'"),
        ("globalTargetsNC[41:81]", r"field 'globalTargetsNC' has 80 values a row; the range must lie in 0\.\.80"),
        ("globalTargetsNC[47:41]", r"game_field='globalTargetsNC\[47:41\]': field 'globalTargetsNC' has 80 values"),
        ("globalTargetsNC[5:5]", r"field 'globalTargetsNC' has 80 values a row"),
        ("game_id[0:2]", r"game_field='game_id\[0:2\]': field 'game_id' has 1 values a row; .* 0\.\.1"),
        ("board[24:25]", r"field 'board' has 24 values a row; the range must lie in 0\.\.24"),
    ],
)
def test_a_bad_spec_is_a_config_error_naming_game_field(spec, match) -> None:
    with pytest.raises(ConfigError, match=match):
        GameKey(spec, FIELDS)


def test_games_of_a_scalar_id_field() -> None:
    key = GameKey("game_id", FIELDS)
    ids = np.array([5, 9, 5, 5, -1, 9, 7, 5], dtype=np.int64)
    assert key.games({"game_id": ids}) == (4, 4)  # games 5 (4 positions), 9 (2), -1, 7
    assert key.games({"game_id": np.array([3], dtype=np.int64)}) == (1, 1)
    assert key.games({"game_id": np.arange(64, dtype=np.int64)}) == (64, 1)


def test_only_the_range_counts() -> None:
    """Rows that differ only outside the range are one game; rows that differ inside it are not."""
    rng = np.random.default_rng(0)
    g = rng.random((12, 80), dtype=np.float32)  # every row different everywhere
    g[:, 41:47] = np.repeat(rng.random((3, 6), dtype=np.float32), [5, 4, 3], axis=0)
    assert GameKey("globalTargetsNC[41:47]", FIELDS).games({"globalTargetsNC": g}) == (3, 5)
    assert GameKey("globalTargetsNC[41:46]", FIELDS).games({"globalTargetsNC": g}) == (3, 5)
    assert GameKey("globalTargetsNC[40:47]", FIELDS).games({"globalTargetsNC": g}) == (12, 1)
    assert GameKey("globalTargetsNC", FIELDS).games({"globalTargetsNC": g}) == (12, 1)
    g[2, 46] = np.nextafter(g[2, 46], np.float32(2))  # one ulp in the range: row 2 leaves the game of 5, alone
    assert GameKey("globalTargetsNC[41:47]", FIELDS).games({"globalTargetsNC": g}) == (4, 4)


def test_a_range_over_a_multi_dimensional_field_is_of_its_flattened_values() -> None:
    rng = np.random.default_rng(1)
    board = rng.integers(0, 2, size=(40, 2, 3, 4), dtype=np.uint8)
    for a, b in [(0, 24), (0, 3), (5, 9), (12, 24), (20, 21)]:
        key = GameKey(f"board[{a}:{b}]", FIELDS)
        want = reference(board.reshape(40, -1)[:, a:b])
        assert key.games({"board": board}) == want, (a, b)
        assert key.games({"board": board[::-1].copy()}) == want  # the order of the rows does not matter


def test_the_katago_game_hash_of_gathered_records_matches_numpy() -> None:
    """Records as the stream gathers them: fields are strided views into a structured array, selfplay rows in
    whole games, shuffled; the counts equal np.unique's over the hash channels, batch by batch."""
    rows = katago_rows(200, seed=5, game_length=12)
    fields = {k: (v.dtype, v.shape[1:]) for k, v in rows.items()}
    records = np.empty(200, dtype=[(k, v.dtype, v.shape[1:]) for k, v in rows.items()])
    for k, v in rows.items():
        records[k] = v
    order = np.random.default_rng(2).permutation(200)
    key = GameKey("globalTargetsNC[41:47]", fields)
    whole = reference(rows["globalTargetsNC"][:, 41:47])
    all_games = whole[0]
    assert 200 // 18 <= all_games <= 200 // 6 + 1  # whole games of 6 to 18 positions
    for lo in range(0, 200, 50):
        batch = records[order[lo : lo + 50]]
        view = batch["globalTargetsNC"]
        assert not view.flags.c_contiguous  # a field of a structured array: strided
        assert key.games({"globalTargetsNC": view}) == reference(view[:, 41:47])
    assert key.games({"globalTargetsNC": records["globalTargetsNC"]}) == whole


def test_other_fields_of_the_batch_are_ignored() -> None:
    key = GameKey("game_id", FIELDS)
    batch = {"game_id": np.array([1, 1, 2], dtype=np.int64), "board": np.zeros((3, 2, 3, 4), np.uint8)}
    assert key.games(batch) == (2, 2)
