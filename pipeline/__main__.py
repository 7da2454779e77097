"""``python -m pipeline --input GLOB --output DIR [options]``."""
from pipeline.process_exit import run_command
from pipeline.run import main

if __name__ == "__main__":
    run_command(main)
