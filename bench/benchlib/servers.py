"""The three contenders' servers: forge-sim (direct), nginx and forge-vram-proxy, started on
ports picked here, each pinned to the server CPUs. Config files are written into the run's
temporary folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .procs import Proc, Processes, free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
# BENCH_BIN_DIR: measure binaries built elsewhere (another commit); bench/run then builds nothing.
BIN_DIR = Path(os.environ.get("BENCH_BIN_DIR") or ROOT / "target/release")
SIM_BIN = BIN_DIR / "forge-sim"
PROXY_BIN = BIN_DIR / "forge-vram-proxy"
# The reference floor for small requests: hyper's server and pooled client, nothing else
# (examples/bare_hyper_proxy.rs).
BARE_BIN = BIN_DIR / "examples" / "bare_hyper_proxy"

FLUX = "flux1-dev-Q4_0.gguf"
SDXL = "sd_xl_base_1.0.safetensors"
SD15 = "v1-5-pruned-emaonly.safetensors"
CHECKPOINTS = {"flux": FLUX, "sdxl": SDXL, "sd15": SD15}


@dataclass
class Server:
    name: str
    url: str  # http://127.0.0.1:PORT
    proc: Proc
    config: dict

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_sim(
    procs: Processes,
    cpus: str | None,
    *,
    vram_mib: int = 12288,
    time_scale: float = 0.0,
    image_bytes: int = 2000,
    name: str = "forge-sim",
) -> Server:
    port = free_port()
    argv = [
        str(SIM_BIN),
        "--listen", f"127.0.0.1:{port}",
        "--vram-mib", str(vram_mib),
        "--checkpoints", ",".join([FLUX, SDXL, SD15]),
        "--time-scale", repr(time_scale),
        "--image-bytes", str(image_bytes),
    ]
    proc = procs.start(name, argv, cpus, env={"RUST_LOG": "warn"})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/sdapi/v1/progress", proc)
    config = {"vram_mib": vram_mib, "time_scale": time_scale, "image_bytes": image_bytes, "argv": argv}
    return Server(name, url, proc, config)


def proxy_toml(
    backends: list[str],
    *,
    verify: bool = True,
    max_bypass: int | None = None,
    generation_routes: list[str] | None = None,
) -> str:
    """The proxy's config: VRAM from forge-sim's /sdapi/v1/memory (no GPU here), logs at
    warn so logging stays out of the measurement, bodies up to 1 GiB."""
    lines = []
    for url in backends:
        lines += ["[[backends]]", f'url = "{url}"', 'vram_source = "backend"', ""]
    lines += ["[memory]", f"verify_before_generation = {'true' if verify else 'false'}", ""]
    lines += ["[scheduler]", 'routing = "affinity"']
    if max_bypass is not None:
        lines.append(f"max_bypass = {max_bypass}")
    lines += ["queue_per_backend = 64", "queue_total = 256", ""]
    lines += ["[limits]", 'max_request_body = "1GiB"', ""]
    if generation_routes is not None:
        routes = ", ".join(f'"{r}"' for r in generation_routes)
        lines += ["[generation]", f"routes = [{routes}]", ""]
    lines += ["[log]", 'level = "warn"', ""]
    return "\n".join(lines)


def start_proxy(
    procs: Processes,
    cpus: str | None,
    workdir: Path,
    backends: list[str],
    *,
    name: str = "forge-vram-proxy",
    **options,
) -> Server:
    port = free_port()
    config_file = workdir / f"{name}-{port}.toml"
    text = proxy_toml(backends, **options)
    config_file.write_text(text)
    argv = [str(PROXY_BIN), "--listen", f"127.0.0.1:{port}", "--config", str(config_file)]
    # With RUST_LOG unset the file's [log] level applies.
    env = {"RUST_LOG": "warn"}
    proc = procs.start(name, argv, cpus, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/proxy/ready", proc)
    return Server(name, url, proc, {"toml": text, "argv": argv})


NGINX_CONF = """\
# A fair reverse proxy in front of forge-sim: keep-alive to the upstream, no buffering
# either way, no body limit, no access log, as many workers as the proxy has tokio workers.
daemon off;
master_process on;
user root;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream forge {{
        server {upstream};
        # Idle upstream connections kept: at least the 256 concurrent requests measured, as
        # the proxy's pool keeps them all. With 64, nginx opens and closes connections beyond
        # 64 at 256 clients, overflows forge-sim's listen queue (SYNs dropped) and its p99
        # becomes a 1 s SYN retry.
        keepalive 512;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 0;
        location / {{
            proxy_pass http://forge;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $proxy_host;
            # The same headers forge-vram-proxy adds, so both do the same work.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffering off;
            proxy_request_buffering off;
            # With buffering off nginx relays the answer through one proxy_buffer_size
            # buffer; the default (one 4-8 KiB page) halves its speed on a 32 MiB body.
            # 64 KiB is what a fair configuration for large images uses.
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


def start_bare(procs: Processes, cpus: str | None, upstream_url: str) -> Server:
    port = free_port()
    argv = [str(BARE_BIN), f"127.0.0.1:{port}", upstream_url.removeprefix("http://")]
    proc = procs.start("bare-hyper-proxy", argv, cpus)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/sdapi/v1/progress", proc)
    return Server("bare hyper", url, proc, {"argv": argv})


def start_nginx(procs: Processes, cpus: str | None, workdir: Path, upstream_url: str, workers: int) -> Server:
    port = free_port()
    conf_dir = workdir / f"nginx-{port}"
    conf_dir.mkdir(parents=True)
    upstream = upstream_url.removeprefix("http://")
    text = NGINX_CONF.format(workers=workers, dir=conf_dir, upstream=upstream, port=port)
    conf = conf_dir / "nginx.conf"
    conf.write_text(text)
    proc = procs.start("nginx", ["nginx", "-p", str(conf_dir), "-c", str(conf)], cpus)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/sdapi/v1/progress", proc)
    return Server("nginx", url, proc, {"conf": text, "workers": workers})
