"""Load and flood benchmarks: `make bench` (bench/run.sh) runs them; see bench/results/README.md."""
