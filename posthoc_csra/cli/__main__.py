"""``python -m posthoc_csra.cli``: the same as ``posthoc-csra``."""
from . import main

main(prog_name="posthoc-csra")
