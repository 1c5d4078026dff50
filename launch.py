"""`python -m launch +experiment=smoke` — compose, plan and submit a clinsynth pipeline."""

from launchers.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
