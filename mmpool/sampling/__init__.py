"""Which entries a participant draws, in which order: pool entries, schedule, pools, mixes, epoch plans (numpy only)."""
