import sys

from gsjax.eval.cli import main

main(sys.argv[1:])
