//! Two proxies side by side, each in front of its own Forge, behind nginx round robin.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{get_json, journal_of, sim, Proxy};

/// nginx, started with its own prefix folder and configuration; killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(upstreams: &[&Proxy]) -> Nginx {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("fvp-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("    server {};\n", p.addr))
            .collect();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream proxies {{\n{servers}    keepalive 8;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
                 location / {{\n      proxy_pass http://proxies;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
                   proxy_buffering off;\n      proxy_read_timeout 600s;\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx is not installed: apt-get install nginx-light (.ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start (see {d}/error.log)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn webuiapi_through_nginx_round_robin_over_two_proxies() {
    let sims = [sim().await, sim().await];
    let proxies = [
        Proxy::start(&sims[0].url(), "").await,
        Proxy::start(&sims[1].url(), "").await,
    ];
    let nginx = Nginx::start(&[&proxies[0], &proxies[1]]);
    let seen = crate::webuiapi::run_client_at("webuiapi_flow.py", nginx.port, &[]).await;
    assert_eq!(seen["txt2img_images"], 1);
    assert_eq!(seen["img2img_images"], 1);

    let mut generations = 0;
    for (sim, proxy) in sims.iter().zip(&proxies) {
        for g in journal_of(sim, "generation") {
            assert_eq!(g["forge_inference_memory"], 10240.0, "{g}");
            generations += 1;
        }
        let status: Value = get_json(proxy.url("/proxy/status")).await;
        for decision in status["decisions"].as_array().unwrap() {
            assert_eq!(
                decision["backend"],
                sim.url(),
                "a proxy applies memory only to its own backend"
            );
        }
        let memory_calls = journal_of(sim, "options")
            .iter()
            .filter(|e| e["changed"].get("forge_inference_memory").is_some())
            .count();
        let applied = status["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["options_sent"].get("forge_inference_memory").is_some())
            .count();
        assert_eq!(
            memory_calls, applied,
            "every memory change on this Forge came from its own proxy"
        );
    }
    assert_eq!(generations, 2, "both generations ran, once each");
}
