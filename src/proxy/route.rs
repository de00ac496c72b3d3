//! Every request classified once, at the door, as Forge's router will see it: Starlette
//! matches routes on the percent-decoded path (`/sdapi/v1/%74xt2img` is txt2img,
//! `/sdapi/v1%2Ftxt2img` too), so the proxy does. Every later step (dispatch, timeouts,
//! metrics labels, which backend) matches on the [`Route`]. The request itself is forwarded
//! with its path exactly as sent.

use std::borrow::Cow;

use forge_schema::model::GenerationRoute;
use http::Method;

use forge_schema::path;

/// The prefix reserved for the proxy's own routes; nothing under it reaches a backend.
pub const OWN_PREFIX: &str = "/proxy/";

/// What a request is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Under `/proxy/`: the proxy's own routes.
    Own,
    /// A `POST` to a generation route: inspected, queued, managed.
    Generation(Generation),
    /// `POST /sdapi/v1/options`: a client's own options call.
    Options,
    /// `/sdapi/v1/progress`: follows the client's generation.
    Progress,
    /// `/sdapi/v1/interrupt`, `/sdapi/v1/skip`: they act on the client's generation.
    Stop(Stop),
    /// `POST /sdapi/v1/refresh-checkpoints`: Forge re-reads its models folder, so the
    /// backend's checkpoint catalog is read again after it.
    RefreshCheckpoints,
    /// Anything else.
    PassThrough,
}

/// What a client asks of its running generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Interrupt,
    Skip,
}

impl Stop {
    /// Forge's answer when nothing runs: `interrupt` answers `{}`, `skip` `null`.
    pub fn idle_answer(self) -> &'static str {
        match self {
            Stop::Interrupt => "{}",
            Stop::Skip => "null",
        }
    }
}

/// A generation route: one of `generation.routes`, by index, and Forge's model for it when
/// it is one of Forge's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub index: usize,
    pub forge: Option<GenerationRoute>,
}

impl Route {
    /// Classifies `method` and the path as the client sent it; `generation_routes` are the
    /// configured ones.
    pub fn classify(method: &Method, raw_path: &str, generation_routes: &[String]) -> Route {
        Self::classify_decoded(method, &decode(raw_path), generation_routes)
    }

    /// The same, from the path already percent-decoded ([`decode`]).
    pub fn classify_decoded(method: &Method, path: &str, generation_routes: &[String]) -> Route {
        if path.starts_with(OWN_PREFIX) {
            return Route::Own;
        }
        let post = method == Method::POST;
        if post {
            if let Some(index) = generation_routes.iter().position(|r| r == path) {
                return Route::Generation(Generation {
                    index,
                    forge: GenerationRoute::of_path(path),
                });
            }
            match path {
                path::OPTIONS => return Route::Options,
                path::REFRESH_CHECKPOINTS => return Route::RefreshCheckpoints,
                _ => {}
            }
        }
        match path {
            path::PROGRESS => Route::Progress,
            path::INTERRUPT => Route::Stop(Stop::Interrupt),
            path::SKIP => Route::Stop(Stop::Skip),
            _ => Route::PassThrough,
        }
    }

    /// The metrics' `route` label.
    pub fn label(self, generation_routes: &[String]) -> Cow<'static, str> {
        match self {
            Route::Own => "proxy".into(),
            Route::Generation(Generation {
                forge: Some(route), ..
            }) => route.as_str().into(),
            Route::Generation(Generation { index, .. }) => generation_routes
                .get(index)
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or("generation")
                .to_owned()
                .into(),
            Route::Options => "options".into(),
            Route::Progress | Route::Stop(_) | Route::RefreshCheckpoints | Route::PassThrough => {
                "pass_through".into()
            }
        }
    }
}

/// The path as uvicorn hands it to Starlette: percent-decoded; a path that does not decode
/// to UTF-8 stays as sent (it matches none of Forge's routes either way).
pub fn decode(raw_path: &str) -> Cow<'_, str> {
    if !raw_path.contains('%') {
        return Cow::Borrowed(raw_path);
    }
    percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .unwrap_or(Cow::Borrowed(raw_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<String> {
        vec![
            "/sdapi/v1/txt2img".into(),
            "/sdapi/v1/img2img".into(),
            "/custom/generate".into(),
        ]
    }

    fn classify(method: Method, path: &str) -> Route {
        Route::classify(&method, path, &routes())
    }

    #[test]
    fn generations_are_classified_on_the_percent_decoded_path() {
        let txt2img = Route::Generation(Generation {
            index: 0,
            forge: Some(GenerationRoute::Txt2Img),
        });
        for path in [
            "/sdapi/v1/txt2img",
            "/sdapi/v1/%74xt2img",
            "/sdapi/v1%2Ftxt2img",
        ] {
            assert_eq!(classify(Method::POST, path), txt2img, "{path}");
        }
        assert_eq!(
            classify(Method::POST, "/custom/generate"),
            Route::Generation(Generation {
                index: 2,
                forge: None
            })
        );
        // Another method, another case, a trailing slash: not Forge's txt2img route.
        for (method, path) in [
            (Method::GET, "/sdapi/v1/txt2img"),
            (Method::POST, "/sdapi/v1/TXT2IMG"),
            (Method::POST, "/sdapi/v1/txt2img/"),
            (Method::POST, "//sdapi/v1/txt2img"),
        ] {
            assert_eq!(classify(method, path), Route::PassThrough, "{path}");
        }
    }

    #[test]
    fn each_other_route_once() {
        assert_eq!(classify(Method::GET, "/proxy/status"), Route::Own);
        assert_eq!(
            classify(Method::POST, "/sdapi/v1/opt%69ons"),
            Route::Options
        );
        assert_eq!(
            classify(Method::GET, "/sdapi/v1/options"),
            Route::PassThrough
        );
        assert_eq!(classify(Method::GET, "/sdapi/v1/progress"), Route::Progress);
        assert_eq!(
            classify(Method::POST, "/sdapi/v1/interrupt"),
            Route::Stop(Stop::Interrupt)
        );
        assert_eq!(
            classify(Method::POST, "/sdapi/v1/sk%69p"),
            Route::Stop(Stop::Skip)
        );
        assert_eq!(
            classify(Method::POST, "/sdapi/v1/refresh-checkpoints"),
            Route::RefreshCheckpoints
        );
        assert_eq!(classify(Method::GET, "/sdapi/v1/%ff"), Route::PassThrough);
    }

    #[test]
    fn labels_name_the_generation_route() {
        assert_eq!(
            classify(Method::POST, "/sdapi/v1/img2img").label(&routes()),
            "img2img"
        );
        assert_eq!(
            classify(Method::POST, "/custom/generate").label(&routes()),
            "generate"
        );
        assert_eq!(classify(Method::GET, "/").label(&routes()), "pass_through");
    }
}
