"""``python -m nlhf``: the ``nlhf`` command, so ``accelerate launch -m nlhf train ...`` works."""

from nlhf.cli import main

if __name__ == "__main__":
    main()
