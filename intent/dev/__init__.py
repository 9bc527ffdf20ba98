"""What runs the whole stack on one machine: the process supervisor (``intent up``), the
in-process stack the demo, the benchmarks and the tests start, and the demo itself."""
