"""`python -m pgcloak` runs the same CLI as the `pgcloak` console script."""

from pgcloak.cli import main

raise SystemExit(main())
