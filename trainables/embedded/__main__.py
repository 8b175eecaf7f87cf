"""python -m trainables.embedded OUT_DIR: build the embedded model (see the package's docstring)."""

from trainables.embedded import main

main()
