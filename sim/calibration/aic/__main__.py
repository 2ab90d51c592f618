"""``python -m sim.calibration.aic``: regenerate the shipped ``*-aic`` profiles."""

from sim.calibration.aic.ship import main

raise SystemExit(main())
