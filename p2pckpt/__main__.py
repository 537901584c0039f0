"""``python -m p2pckpt``."""

from p2pckpt.cli.main import main

main()
