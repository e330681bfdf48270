from labq.cli import run

run()
