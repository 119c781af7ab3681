"""The ``accord`` command: assembles every component's commands, the demo and the benchmarks."""
