//! Integration tests: the proxy and `forge-sim` over real sockets.

mod access;
mod backends;
mod browser;
mod cli;
mod edges;
mod failures;
mod gzip;
mod hostile;
mod monitoring;
mod nginx;
mod observe;
mod operator;
mod passthrough;
mod process;
mod reload;
mod support;
mod tls;
mod vram;
mod webuiapi;
