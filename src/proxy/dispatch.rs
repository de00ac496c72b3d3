//! Dispatch: every request is classified once ([`Route`]), observed, then answered by the
//! proxy's own routes or handed to the stage that proxies it. `X-Forge-Model-Type` never
//! reaches Forge, on any route.

use std::net::IpAddr;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::Request;
use tower::ServiceExt;

use crate::access::{self, Caller};
use crate::error::ProxyError;
use crate::forward::forwarding::client_address;
use crate::generation::MODEL_TYPE_HEADER;
use crate::proxy::observe::observe;
use crate::proxy::pass_through;
use crate::proxy::route::{self, Route};
use crate::scheduler::Follow;
use crate::state::AppState;
use crate::{admin, client_options, generation};

/// The whole proxy as one service: `handle` answers any request.
#[derive(Clone)]
pub struct Proxy {
    state: AppState,
    own_routes: Router,
}

/// The proxy over `state`: [`run`](crate::run) serves it on a socket; a test can call
/// [`Proxy::handle`] directly.
pub fn app(state: AppState) -> Proxy {
    Proxy {
        own_routes: admin::routes(state.clone()),
        state,
    }
}

impl Proxy {
    /// Answers one request from the peer at `peer` (its address, when known: progress calls
    /// follow the client's running generation).
    ///
    /// Proxied requests are dispatched here rather than through axum's router and
    /// middleware: on a small pass-through request those layers (boxed futures, cloned
    /// services, request extensions) cost about a tenth of the proxy's CPU time (measured
    /// with `bench/run --only small`).
    pub async fn handle(&self, peer: Option<IpAddr>, request: Request<Body>) -> Response {
        if let Some(answer) = answered_at_the_door(&request) {
            return observe(&self.state, "proxy".into(), None, request, |_| async move {
                answer
            })
            .await;
        }
        let config = &self.state.config();
        let routes = &config.generation_routes;
        let decoded = route::decode(request.uri().path());
        let route = Route::classify_decoded(request.method(), &decoded, routes);
        let need = access::need(route, request.method(), &decoded, routes);
        drop(decoded);
        let client = client_address(peer, request.headers(), &config.access.trusted_proxies);
        let knock = access::Knock {
            addr: client,
            peer,
            method: request.method(),
            path: request.uri().path(),
            headers: request.headers(),
        };
        let admitted = access::admit(&config.access, need, knock);
        let key = admitted
            .as_ref()
            .ok()
            .and_then(Caller::key_name)
            .map(str::to_owned);
        observe(
            &self.state,
            route.label(routes),
            key,
            request,
            |request| async move {
                match admitted {
                    Ok(caller) => self.dispatch(route, caller, request).await,
                    Err(denied) => ProxyError::Denied(denied).into_response(),
                }
            },
        )
        .await
    }

    async fn dispatch(&self, route: Route, client: Caller, mut request: Request<Body>) -> Response {
        let state = &self.state;
        if client.key.is_some() {
            access::remove_credentials(request.headers_mut());
        }
        if route == Route::Own {
            request.extensions_mut().insert(client);
            return match self.own_routes.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        }
        let model_type = request.headers_mut().remove(MODEL_TYPE_HEADER);
        // The generation's and the options call's futures are boxed: they are many times
        // the size of a pass-through's, which would otherwise carry (and copy) their room.
        match route {
            Route::Generation(generation) => {
                Box::pin(generation::handle(
                    state.clone(),
                    client,
                    generation,
                    model_type,
                    request,
                ))
                .await
            }
            Route::Options => {
                Box::pin(client_options::handle(state.clone(), client, request)).await
            }
            Route::RefreshCheckpoints => {
                pass_through::refresh_checkpoints(state, &client, request).await
            }
            Route::Progress => pass_through::progress(state, &client, request).await,
            Route::Stop(stop) => pass_through::stop(state, &client, request, stop).await,
            Route::Own | Route::PassThrough => {
                pass_through::forward(state, &client, request, Follow::Any).await
            }
        }
    }
}

/// What every server answers itself rather than forwarding (RFC 9112): a request whose
/// `Host` is missing or repeated is a 400, `CONNECT` (a tunnel, not this proxy's job) a 405,
/// `OPTIONS *` (the server's own capabilities) a 200.
fn answered_at_the_door(request: &Request<Body>) -> Option<Response> {
    let hosts = request.headers().get_all(http::header::HOST).iter().count();
    let needs_host = request.version() == http::Version::HTTP_11;
    if hosts > 1 || (needs_host && hosts == 0) {
        return Some(
            ProxyError::Malformed {
                reason: format!(
                    "an HTTP/1.1 request carries exactly one Host header (RFC 9112 §3.2); this one has {hosts}"
                ),
            }
            .into_response(),
        );
    }
    if request.method() == http::Method::CONNECT {
        let mut answer = ProxyError::NotForwarded {
            method: "CONNECT".to_owned(),
        }
        .into_response();
        answer
            .headers_mut()
            .insert(http::header::ALLOW, ALLOW.clone());
        return Some(answer);
    }
    if request.method() == http::Method::OPTIONS && request.uri() == "*" {
        let mut answer = Response::new(Body::empty());
        answer
            .headers_mut()
            .insert(http::header::ALLOW, ALLOW.clone());
        return Some(answer);
    }
    None
}

/// The methods the proxy forwards.
static ALLOW: http::HeaderValue =
    http::HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::StatusCode;
    use http_body_util::BodyExt;

    async fn proxy() -> Proxy {
        app(AppState::build(Config::default()).await.unwrap())
    }

    #[tokio::test]
    async fn an_unknown_proxy_route_is_the_proxys_404_and_never_reaches_a_backend() {
        // The default backend (127.0.0.1:7860) is not running: a forwarded request would be
        // a 502, not this 404.
        let request = Request::get("/proxy/nope")
            .header("host", "proxy")
            .body(Body::empty())
            .unwrap();
        let response = proxy().await.handle(None, request).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().contains_key("x-request-id"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "NotFound");
    }

    #[tokio::test]
    async fn a_request_id_sent_by_the_client_is_kept_and_every_request_is_counted() {
        let proxy = proxy().await;
        let request = Request::get("/proxy/health")
            .header("host", "proxy")
            .header("x-request-id", "client-7")
            .body(Body::empty())
            .unwrap();
        let response = proxy.handle(None, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "client-7");
        let request = Request::get("/proxy/metrics")
            .header("host", "proxy")
            .body(Body::empty())
            .unwrap();
        let metrics = proxy.handle(None, request).await.into_body();
        let metrics = metrics.collect().await.unwrap().to_bytes();
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(
            metrics.contains(r#"forge_proxy_requests_total{route="proxy",status="200"} 1"#),
            "{metrics}"
        );
    }
}
