//! Stage 1: the body, read as Forge reads it. The proxy manages only what Forge will run: a
//! body Forge cannot read, or will refuse before it runs anything (a field its model does
//! not validate, an img2img without images), goes to Forge untouched and changes nothing.

use bytes::Bytes;

use crate::decide::body::GenerationBody;
use crate::proxy::observe::request_id;
use crate::proxy::request::Head;
use crate::proxy::route;
use crate::state::AppState;

/// What the proxy does with a generation body.
pub enum Inspected<'a> {
    /// Forge will run it: the proxy decides for it.
    Managed(GenerationBody<'a>),
    /// Forge answers it with an error as it would without the proxy: forwarded untouched.
    LeftToForge,
}

pub fn inspect<'a>(
    state: &AppState,
    route: route::Generation,
    head: &Head,
    bytes: &'a Bytes,
) -> Inspected<'a> {
    let path = head.uri.path();
    let id = request_id(&head.headers);
    let body = match GenerationBody::read(head.content_type(), bytes) {
        Ok(body) => body,
        Err(unread) => {
            tracing::info!(
                request_id = id,
                path,
                why = unread.as_str(),
                "generation body Forge does not read as JSON: forwarded untouched"
            );
            return Inspected::LeftToForge;
        }
    };
    if let Some(refusal) = body.refusal(route.forge) {
        tracing::info!(request_id = id, path, why = %refusal, "Forge will refuse this generation: forwarded untouched, nothing changed for it");
        state.metrics.left_to_forge();
        return Inspected::LeftToForge;
    }
    Inspected::Managed(body)
}
