"""Terminal features for every scorer: `scorer aggregate` and the terminal table each scorer reads."""
