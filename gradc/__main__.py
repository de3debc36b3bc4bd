"""`python -m gradc`: the gradc command."""
import sys

from .cli import main

sys.exit(main())
