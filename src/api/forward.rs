//! With a shared (PostgreSQL) store, routing runs on one instance, the
//! routing leader. Requests that need the router's state (accept, decline,
//! resolve, transfer, presence, offers, assignments, the queue, and an
//! associate's view of an inquiry) are forwarded to the leader when they
//! reach another instance, so clients can talk to any instance behind a
//! load balancer. Everything else (webhooks, ops reads) runs where it lands.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::AppState;

/// Set on forwarded requests: an instance that gets one and is not the
/// leader (leadership just moved) answers 503 instead of forwarding again.
const FORWARDED: HeaderName = HeaderName::from_static("x-switchboard-forwarded");
const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn to_leader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.router.is_leader() || !needs_leader(&state, &request) {
        return next.run(request).await;
    }
    if request.headers().contains_key(&FORWARDED) {
        return unavailable("routing leadership is moving; retry");
    }
    let Some(leader) = state.router.leader_url() else {
        return unavailable("no routing leader at the moment; retry");
    };
    let limit = state.settings.load().limits.max_body_bytes;
    match forward(&leader, request, limit).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(leader = %leader, error = %e, "cannot forward a request to the routing leader");
            unavailable("the routing leader is unreachable; retry")
        }
    }
}

fn needs_leader(state: &AppState, request: &Request) -> bool {
    let path = request.uri().path();
    if path == "/api/v1/queue" || path.starts_with("/api/v1/associates") {
        return true;
    }
    let Some(rest) = path.strip_prefix("/api/v1/inquiries/") else {
        return false;
    };
    match rest.split('/').count() {
        // accept / decline / resolve / transfer
        2 => request.method() == Method::POST,
        // An associate may see only what the router holds for them.
        1 => request.method() == Method::GET && !is_ops(state, request),
        _ => false,
    }
}

fn is_ops(state: &AppState, request: &Request) -> bool {
    let settings = state.settings.load();
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (given, &settings.ops_token) {
        (Some(given), Some(ops)) => bool::from(given.as_bytes().ct_eq(ops.expose().as_bytes())),
        _ => false,
    }
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // A redirect is never followed: it would re-send the caller's bearer
        // token to wherever `Location` points, or turn a POST into a GET.
        reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a default HTTP client builds")
    })
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("request body: {0}")]
    Body(axum::Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(
        "the leader answered {0}; redirects are not followed, so set cluster.advertise_url \
         to the address the leader serves its API on"
    )]
    Redirect(reqwest::StatusCode),
}

async fn forward(leader: &str, request: Request, limit: usize) -> Result<Response, ForwardError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(ForwardError::Body)?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut out = client()
        .request(
            parts.method,
            format!("{}{path}", leader.trim_end_matches('/')),
        )
        .header(FORWARDED, HeaderValue::from_static("1"))
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let answer = out.send().await?;
    let status = answer.status();
    if status.is_redirection() {
        return Err(ForwardError::Redirect(status));
    }
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

fn unavailable(message: &str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader address that answers with a redirect, as a proxy in front
    /// of the wrong port might.
    async fn redirecting_server(
        status: u16,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = format!("{url}/elsewhere");
        let app = axum::Router::new().fallback(move |request: Request| {
            let target = target.clone();
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                if request.uri().path() == "/elsewhere" {
                    return StatusCode::OK.into_response();
                }
                let mut response = StatusCode::from_u16(status).unwrap().into_response();
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_str(&target).unwrap());
                response
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, hits)
    }

    #[tokio::test]
    async fn a_redirecting_leader_is_an_error_not_followed() {
        for status in [302, 307] {
            let (leader, hits) = redirecting_server(status).await;
            let request = Request::builder()
                .method(Method::POST)
                .uri("/api/v1/inquiries/INQ-AAAAAA/accept")
                .header(header::AUTHORIZATION, "Bearer associate-token")
                .body(Body::empty())
                .unwrap();
            let err = forward(&leader, request, 1024).await.unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&status.to_string()), "{text}");
            assert!(text.contains("cluster.advertise_url"), "{text}");
            assert_eq!(
                hits.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "only the leader was asked; the redirect was not followed"
            );
        }
    }
}
