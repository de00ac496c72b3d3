"""The benchmark harness's building blocks (processes, servers, clients, statistics, output)."""
