//! Where a route's edge policies meet Pingora's phases (the policies themselves are
//! `policy::{cors, compression, decompression}`):
//!
//! - **CORS**: in `request_filter`, before authentication and limits (a preflight
//!   carries no credential), a preflight is answered here and never forwarded; an
//!   actual request's CORS fields go with whatever answers it. In `response_filter`
//!   the upstream's (or stored) `Access-Control-*` fields give way to the route's.
//! - **Request decompression** (`compression.decompress_requests`): the decoder is
//!   chosen after the policies (a refused request's body is never decoded), the
//!   request goes upstream as identity, and `request_body_filter` decodes each chunk
//!   within its bounds.
//! - **Response compression** (`compression`): the upstream is asked for identity
//!   bytes, and the last step of `response_filter` (after the cache, which stores the
//!   identity copy) hands this client's encoder to the `CompressModule`.

use crate::context::Ctx;
use crate::policy::headers;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

/// `request_filter`, on a route with `cors`: true when the request was a preflight and
/// is answered (the request ends); otherwise its CORS fields are kept for the response.
pub(super) async fn cors_request(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let Some(route) = ctx
        .routing
        .route
        .as_ref()
        .filter(|r| r.edge.cors.is_some())
        .cloned()
    else {
        return Ok(false);
    };
    let Some(cors) = &route.edge.cors else {
        return Ok(false);
    };
    if crate::policy::cors::is_preflight(session.req_header()) {
        let resp = cors.preflight(session.req_header())?;
        answer_preflight(session, ctx, resp).await?;
        return Ok(true);
    }
    // On whatever answers it, a rejection included (a script can read its 401).
    cors.actual_fields(
        &session.req_header().headers,
        &mut ctx.response.extra_headers,
    );
    Ok(false)
}

/// Sends a CORS preflight's answer (`policy::cors::Cors::preflight`): never forwarded,
/// not a rejection.
async fn answer_preflight(
    session: &mut Session,
    ctx: &Ctx,
    mut resp: Box<ResponseHeader>,
) -> Result<()> {
    headers::apply_server_header(&mut resp, super::server_header(ctx));
    resp.insert_header(headers::X_REQUEST_ID, ctx.request.id.as_str())?;
    session.write_response_header(resp, true).await
}

/// `request_filter`, after the policies (a refused request's body is never decoded):
/// the request's `RequestDecoder`, on a route with `compression.decompress_requests`
/// and a body in one coding it decodes.
pub(super) fn choose_decoder(session: &Session, ctx: &mut Ctx) {
    let limits = ctx
        .route()
        .and_then(|r| r.edge.compression.as_ref())
        .and_then(|c| c.decompress_requests());
    if let Some(limits) = limits {
        ctx.request.decoder = crate::policy::decompression::RequestDecoder::for_request(
            session.req_header(),
            &limits,
        );
    }
}

/// `request_body_filter`: a chunk decoded within the decoder's bounds (413 or 400
/// beyond them).
pub(super) fn decode_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut Ctx,
) -> Result<()> {
    if let Some(d) = ctx.request.decoder.as_mut() {
        let input = body.take().unwrap_or_default();
        match d.decode(&input, end_of_stream) {
            // An empty last chunk goes as none (Pingora would write a zero-size chunk
            // and then the terminator again); an empty chunk before it stays empty,
            // which Pingora skips (`None` there would end the upstream body).
            Ok(out) => *body = (!(out.is_empty() && end_of_stream)).then_some(out),
            Err(reject) => {
                let status = reject.status();
                ctx.response.reject = Some(reject);
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "request body could not be decoded within its bounds",
                );
            }
        }
    }
    Ok(())
}

/// `upstream_request_filter`: a decoded body goes as identity; on a route with
/// `compression` the upstream is asked for identity bytes.
pub(super) fn upstream_request(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    if ctx.request.decoder.is_some() {
        crate::policy::decompression::decoded_request_header(req)?;
    }
    if ctx.route().is_some_and(|r| r.edge.compression.is_some()) {
        // The gateway encodes for each client, after the cache: ask for the identity
        // bytes (no field at all would mean any coding, RFC 9110 §12.5.3).
        req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
    }
    Ok(())
}

/// `response_filter`, on a route with `cors`: the upstream's `Access-Control-*` fields
/// removed, `Vary: Origin` (`Cors::on_response`).
pub(super) fn cors_response(resp: &mut ResponseHeader, ctx: &Ctx) {
    if let Some(cors) = ctx.route().and_then(|r| r.edge.cors.as_ref()) {
        cors.on_response(resp);
    }
}

/// `response_filter`'s last step, on a route with `compression`: encode for this
/// client (after the cache, which stores the identity copy). A background refresh has
/// no client to encode for; gRPC is never compressed.
pub(super) fn choose_encoder(session: &mut Session, resp: &mut ResponseHeader, ctx: &Ctx) {
    if let Some(c) = ctx.route().and_then(|r| r.edge.compression.as_ref()) {
        if !ctx.request.refresh && !super::streaming::never_compressed(resp) {
            let encoder = c.on_response(session.req_header(), resp);
            if let Some(m) = session
                .downstream_modules_ctx
                .get_mut::<crate::policy::compression::CompressModule>()
            {
                m.set(encoder);
            }
        }
    }
}
