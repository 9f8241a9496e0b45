"""``mergesmith bench``: the offline benchmark (task data, expert zoo, merges, report)."""
