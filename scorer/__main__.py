"""`python -m scorer` is the same as the `scorer` console script."""

from scorer.cli.main import main

raise SystemExit(main())
