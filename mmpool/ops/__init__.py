"""Operations on converted directories: inspect and verify, sizing (``mmpool plan``), the demo."""
