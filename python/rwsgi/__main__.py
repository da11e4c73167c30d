"""`python -m rwsgi` = the `rwsgi` command."""
import sys

from .cli import main

sys.exit(main())
