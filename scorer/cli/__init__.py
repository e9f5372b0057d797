"""The command line: argparse -> Settings -> an application. Nothing below imports it."""
