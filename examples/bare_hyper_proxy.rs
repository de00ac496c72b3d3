//! The benchmark's reference floor: a reverse proxy made of hyper's HTTP/1.1 server and
//! hyper-util's pooled client — the two parts forge-vram-proxy forwards with — and nothing
//! else: no header handling, no routing, no logs, no metrics, no timeouts.
//!
//!     bare_hyper_proxy LISTEN_ADDR BACKEND_ADDR
//!
//! `bench/run` measures it beside nginx and the proxy on small requests: the distance from it
//! to nginx is what these parts cost; the distance from the proxy to it is the proxy's own.
//! Not a product: it answers 502 with no body when the backend fails.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_hyper_proxy LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let backend: &'static str = Box::leak(backend.into_boxed_str());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                forward(client.clone(), backend, request)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    backend: &str,
    mut request: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{backend}{path}").parse::<Uri>() else {
        return Ok(bad_gateway());
    };
    *request.uri_mut() = uri;
    Ok(match client.request(request).await {
        Ok(response) => response.map(BodyExt::boxed_unsync),
        Err(_) => bad_gateway(),
    })
}

fn bad_gateway() -> Response<BoxBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
