//! The OpenAPI 3 document of the API listener, served at `GET /openapi.json` and generated from
//! the handlers: each handler carries a `#[utoipa::path]` annotation (method, path, parameters,
//! body, answers) and is registered with `utoipa_axum::routes!` — or [`any_method!`] for
//! GoBelieve's endpoints, which answer every method — so one line adds an endpoint to the router
//! and to the document together (docs/http-api.md, *Adding an endpoint*).
//!
//! Also here: the one error shape ([`ErrorBody`]), the error answers every operation of a router
//! may give ([`document_errors`]), and [`json_errors`], which turns an error the framework answers
//! by itself (an extractor's refusal, a 405 without a body) into that shape.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// Registers a GoBelieve endpoint, which answers any method as GoBelieve's does: documented as
/// GET and POST (its `#[utoipa::path]` says `method(get, post)`), served for every method.
macro_rules! any_method {
    ($handler:ident) => {{
        let (schemas, paths, _) = utoipa_axum::routes!($handler);
        (schemas, paths, axum::routing::any($handler))
    }};
}
pub(crate) use any_method;

/// Every error answer of the HTTP API, whatever the status: GoBelieve's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub meta: ErrorMeta,
}

/// The status again, and what was wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorMeta {
    /// The HTTP status code.
    pub code: u16,
    /// What was wrong, naming the parameter, key or limit at fault.
    pub message: String,
}

impl ErrorBody {
    /// The error answer with `status` and `message`.
    pub fn response(status: StatusCode, message: impl Into<String>) -> Response {
        let body = ErrorBody {
            meta: ErrorMeta {
                code: status.as_u16(),
                message: message.into(),
            },
        };
        (status, Json(body)).into_response()
    }
}

/// An opaque byte string (an upload, a downloaded file); only its schema is used.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Binary(Vec<u8>);

/// Document settings that no handler owns: title, the authentication schemes, the error shape.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "banter HTTP API",
        description = "GoBelieve's server API, banter's token, admin and server endpoints, the app \
                       API and the web client, as served on the API listener (`api.listen`). \
                       Every error is `{\"meta\": {\"code\", \"message\"}}` (ErrorBody). See \
                       docs/http-api.md and docs/app-api.md."
    ),
    components(schemas(ErrorBody, ErrorMeta)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "gobelieve", description = "GoBelieve's server API (any method is accepted)"),
        (name = "auth", description = "Tokens"),
        (name = "admin", description = "Groups, users, devices, supporters, media (operators)"),
        (name = "server", description = "banter's server API beside GoBelieve's"),
        (name = "operations", description = "Health, metrics, this document"),
        (name = "app", description = "The app API the SDKs call as users (`app_api.prefix`)"),
        (name = "web", description = "The web client and admin console"),
    )
)]
pub(crate) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_secret",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <api.secret>`, required on every operator \
                         endpoint when `api.secret` is set",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "user_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <the user's IM token>`"))
                    .build(),
            ),
        );
    }
}

/// The operations of a path item, whatever their method.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Adds to every operation of `doc` the error answers any of them may give (`(status, when)`),
/// unless the operation documents that status itself.
pub(crate) fn document_errors(doc: &mut Document, errors: &[(StatusCode, &str)]) {
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            for (status, when) in errors {
                op.responses
                    .responses
                    .entry(status.as_u16().to_string())
                    .or_insert_with(|| error_response(when));
            }
        }
    }
}

/// Marks every operation of `doc` as authenticated by `scheme` (`api_secret` or `user_token`).
pub(crate) fn document_security(doc: &mut Document, scheme: &str) {
    use utoipa::openapi::security::SecurityRequirement;
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            op.security.get_or_insert_with(|| {
                vec![SecurityRequirement::new(scheme, Vec::<String>::new())]
            });
        }
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// The document, rendered once, served by [`openapi_json`].
#[derive(Clone)]
pub(crate) struct Rendered(pub Arc<String>);

impl Rendered {
    pub fn new(doc: &Document) -> Rendered {
        Rendered(Arc::new(doc.to_pretty_json().unwrap_or_else(|e| {
            // Serializing plain data cannot fail; if it did, the document says so.
            serde_json::json!({ "error": e.to_string() }).to_string()
        })))
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of this listener", body = Object))
)]
pub(crate) async fn openapi_json(Extension(doc): Extension<Rendered>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}

/// Error answers the framework gives by itself (an extractor's plain-text refusal, an empty 405)
/// rewritten into [`ErrorBody`]; answers already in JSON, and every success, pass unchanged.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    } else {
        text
    };
    let fresh = ErrorBody::response(status, message);
    let (fresh_parts, fresh_body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        fresh_parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    Response::from_parts(parts, fresh_body)
}
