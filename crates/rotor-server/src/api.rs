//! The server HTTP API: `POST /api/<method>` with Centrifugo's request and response shapes.
//! Results are `{"result":…}`, failures `{"error":{"code","message"}}`, both with HTTP 200;
//! a wrong or missing key is 401, an unparsable body 400, an unknown method 404.

use std::collections::BTreeMap;

use rotor_core::broker::Control;
use rotor_core::{CoreError, Node, PublishOptions};
use rotor_protocol::{ClientInfo, ErrorCode, Publication, Raw, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::hyper::body::Bytes;
use warp::reply::Response;

use crate::http::json_response;
use crate::state::AppState;
use serde_json::value::RawValue;

/// Compares without leaking the position of the first difference through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request carries the API key (or the API needs none): decided from the headers
/// and the query alone, before the body is read.
pub fn authorized(state: &AppState, headers: &HeaderMap, query: &BTreeMap<String, String>) -> bool {
    let api = &state.config.http_api;
    if api.insecure {
        return true;
    }
    if api.key.is_empty() {
        return false;
    }
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let given = header("x-api-key")
        .or_else(|| {
            header("authorization").and_then(|v| {
                v.strip_prefix("apikey ")
                    .or_else(|| v.strip_prefix("Apikey "))
            })
        })
        .or_else(|| {
            api.key_in_query
                .then(|| query.get("api_key").map(String::as_str))
                .flatten()
        });
    given.is_some_and(|k| constant_time_eq(k.trim().as_bytes(), api.key.as_bytes()))
}

/// The answer to a request without the right key (401), sent before its body is read.
pub fn unauthorized() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": error_value(ErrorCode::Unauthorized.to_error()) }),
    )
}

/// Handles one API request whose key was checked (see [`authorized`]).
pub async fn handle(state: AppState, method: String, body: Bytes) -> Response {
    if method == "batch" {
        return batch(&state.node, &body).await;
    }
    let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
    let params: &RawValue = {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(method, error = %e, "server API request body is not JSON");
                let e = CoreError::BadRequest(e.to_string());
                return json_response(StatusCode::BAD_REQUEST, &json!({ "error": error_json(&e) }));
            }
        }
    };
    match call(&state.node, &method, params, None).await {
        Some(Ok(result)) => json_response(StatusCode::OK, &json!({ "result": result })),
        Some(Err(e)) => json_response(StatusCode::OK, &json!({ "error": error_json(&e) })),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": error_json(&CoreError::MethodNotFound) }),
        ),
    }
}

/// The `error` object of an answer: `{code, message}` from the core's one mapping.
pub(crate) fn error_json(e: &CoreError) -> Value {
    error_value(e.to_api_error())
}

fn error_value(err: rotor_protocol::Error) -> Value {
    json!({"code": err.code, "message": err.message})
}

/// A `batch` body with its commands left as they are in the body: each is parsed only when
/// it runs, so a batch holds its body and its answer, not every command decoded at once.
#[derive(Deserialize)]
struct BatchRequest<'a> {
    #[serde(default, borrow)]
    commands: Vec<&'a RawValue>,
    #[serde(default)]
    parallel: bool,
}

/// Commands of a `parallel` batch that run at once (replies stay in command order).
const BATCH_PARALLELISM: usize = 64;

/// `batch`: runs commands in order (or in groups of [`BATCH_PARALLELISM`] run at once with
/// `parallel`, replies still in command order); replies are keyed by method name and returned at the
/// top level, not under `result`. Each reply is written into the answer as it is made.
async fn batch(node: &Node, body: &[u8]) -> Response {
    // An empty body is an empty batch; a body that is not JSON is a 400, as for every
    // method; JSON that is not a batch is the error reply.
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let req: BatchRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) if e.is_syntax() || e.is_eof() => {
            tracing::info!(error = %e, "server API request body is not JSON");
            let e = CoreError::BadRequest(e.to_string());
            return json_response(StatusCode::BAD_REQUEST, &json!({ "error": error_json(&e) }));
        }
        Err(e) => {
            let e = CoreError::BadRequest(e.to_string());
            return json_response(StatusCode::OK, &json!({"error": error_json(&e)}));
        }
    };
    let mut out = Vec::with_capacity(64 + req.commands.len() * 16);
    out.extend_from_slice(b"{\"replies\":[");
    let mut write = |i: usize, reply: Value| {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &reply).expect("replies serialize");
    };
    let texts: Vec<&str> = req.commands.iter().map(|raw| raw.get()).collect();
    if req.parallel {
        // In groups, each run at once; no closure over the commands (a stream of them
        // would need a higher-ranked `Send` the compiler cannot prove).
        let mut i = 0;
        for group in texts.chunks(BATCH_PARALLELISM) {
            let mut running = Vec::with_capacity(group.len());
            for text in group {
                running.push(batch_command(node, text));
            }
            for reply in futures_util::future::join_all(running).await {
                write(i, reply);
                i += 1;
            }
        }
    } else {
        for (i, text) in texts.into_iter().enumerate() {
            write(i, batch_command(node, text).await);
        }
    }
    out.extend_from_slice(b"]}");
    let mut res = Response::new(out.into());
    res.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    res
}

/// One command of a batch, parsed from its text when it runs.
async fn batch_command(node: &Node, text: &str) -> Value {
    let cmd = match serde_json::from_str::<BTreeMap<String, &RawValue>>(text) {
        Ok(c) => c,
        Err(e) => return json!({"error": error_json(&CoreError::BadRequest(e.to_string()))}),
    };
    let Some((method, params)) = cmd.into_iter().next() else {
        return json!({"error": error_json(&CoreError::BadRequest("empty command".into()))});
    };
    match call(node, &method, params, None).await {
        Some(Ok(result)) => json!({ method: result }),
        Some(Err(e)) => json!({"error": error_json(&e)}),
        None => json!({"error": error_json(&CoreError::MethodNotFound)}),
    }
}

/// A method's parameters from their text as the request carried it: payloads (`data`,
/// `info`) keep their bytes, key order and number precision (as Centrifugo passes them
/// through); a `serde_json::Value` in between would sort keys and round big numbers.
fn parse<T: for<'de> Deserialize<'de>>(params: &RawValue) -> Result<T, CoreError> {
    serde_json::from_str(params.get()).map_err(|e| CoreError::BadRequest(e.to_string()))
}

/// Parameters that are absent or `null`.
fn is_null(params: &RawValue) -> bool {
    params.get().trim() == "null"
}

fn required(name: &str, value: &str) -> Result<(), CoreError> {
    if value.is_empty() {
        return Err(CoreError::BadRequest(format!("{name} required")));
    }
    Ok(())
}

#[derive(Deserialize)]
struct PublishParams {
    #[serde(default)]
    channel: String,
    data: Option<Raw>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    #[serde(default)]
    delta: bool,
}

#[derive(Deserialize)]
struct BroadcastParams {
    #[serde(default)]
    channels: Vec<String>,
    data: Option<Raw>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    #[serde(default)]
    delta: bool,
}

/// `data`, or `b64data`: any bytes (Protobuf clients get them as they are, JSON clients as
/// JSON when they hold JSON, else as a base64 string; see docs/protobuf.md).
fn payload(data: Option<Raw>, b64data: Option<String>) -> Result<Raw, CoreError> {
    match (data, b64data) {
        (Some(d), _) => Ok(d),
        (None, Some(b)) => Raw::from_base64(&b)
            .map_err(|_| CoreError::BadRequest("b64data is not valid base64".into())),
        (None, None) => Err(CoreError::BadRequest("data required".into())),
    }
}

fn position_json(p: &StreamPosition) -> Value {
    let mut out = serde_json::Map::new();
    if p.offset > 0 {
        out.insert("offset".into(), json!(p.offset));
    }
    if !p.epoch.is_empty() {
        out.insert("epoch".into(), json!(p.epoch));
    }
    Value::Object(out)
}

#[derive(Deserialize)]
struct ChannelParams {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
struct HistoryParams {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i64,
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct UserTarget {
    #[serde(default)]
    user: String,
    client: Option<String>,
    session: Option<String>,
}

#[derive(Deserialize, Default)]
struct DisconnectObj {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectParams {
    #[serde(flatten)]
    target: UserTarget,
    #[serde(default)]
    whitelist: Vec<String>,
    disconnect: Option<DisconnectObj>,
}

#[derive(Deserialize)]
struct SubscribeParams {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    client: Option<String>,
    session: Option<String>,
    info: Option<Raw>,
    data: Option<Raw>,
}

#[derive(Deserialize)]
struct RefreshParams {
    #[serde(flatten)]
    target: UserTarget,
    #[serde(default)]
    expired: bool,
    expire_at: Option<u64>,
}

#[derive(Deserialize, Default)]
struct ChannelsParams {
    #[serde(default)]
    pattern: String,
}

#[derive(Serialize)]
struct ApiPublication<'a> {
    data: &'a Raw,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: &'a BTreeMap<String, String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn publications_json(pubs: &[Publication]) -> Value {
    Value::Array(
        pubs.iter()
            .map(|p| {
                serde_json::to_value(ApiPublication {
                    data: &p.data,
                    info: p.info.as_ref(),
                    offset: p.offset,
                    tags: &p.tags,
                })
                .expect("serializes")
            })
            .collect(),
    )
}

/// Runs one method; `None` for an unknown method. `actor`, when given, is who the audit
/// trail names for revocations whatever the parameters say (the admin UI's session).
pub(crate) async fn call(
    node: &Node,
    method: &str,
    params: &RawValue,
    actor: Option<&str>,
) -> Option<Result<Value, CoreError>> {
    Some(match method {
        "publish" => publish(node, params).await,
        "connections" => connections(node, params).await,
        "broadcast" => broadcast(node, params).await,
        "presence" => presence(node, params).await,
        "presence_stats" => presence_stats(node, params).await,
        "history" => history(node, params).await,
        "history_remove" => history_remove(node, params).await,
        "channels" => channels(node, params).await,
        "disconnect" => disconnect(node, params).await,
        "unsubscribe" => unsubscribe(node, params).await,
        "subscribe" => subscribe(node, params).await,
        "refresh" => refresh(node, params).await,
        "revoke_token" => revoke_token(node, params, actor).await,
        "invalidate_user_tokens" => invalidate_user_tokens(node, params, actor).await,
        "revoked_tokens" => revoked_tokens(node, params).await,
        "info" => info(node).await,
        _ => return None,
    })
}

/// `info`: every node that is up, this one with its numbers now.
async fn info(node: &Node) -> Result<Value, CoreError> {
    node.nodes().await.map(|nodes| json!({ "nodes": nodes }))
}

#[derive(Deserialize, Default)]
struct ConnectionsParams {
    #[serde(default)]
    user: String,
    /// rotor: only connections subscribed to this channel.
    #[serde(default)]
    channel: String,
    /// Centrifugo PRO's CEL filter: not supported (use `user` and `channel`).
    #[serde(default)]
    expression: String,
    /// rotor: at most this many listed (default [`CONNECTIONS_LIMIT`], at most
    /// [`CONNECTIONS_MAX`]); `total` counts all.
    limit: Option<usize>,
}

/// How many connections `connections` lists unless asked for another number, and the most
/// it lists (each node sends its part through the broker): `total` counts them all.
const CONNECTIONS_LIMIT: usize = 1000;
const CONNECTIONS_MAX: usize = 10_000;

/// `connections`: the connections on every node, by user or channel, in Centrifugo PRO's
/// shape (keyed by client id, `state.channels`, `state.connection_token`, `state.meta`) plus rotor's
/// fields (`node`, `remote_addr`, `expire_at`) and counts (`total`, `by_transport`).
async fn connections(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: ConnectionsParams = if is_null(params) {
        ConnectionsParams::default()
    } else {
        parse(params)?
    };
    if !p.expression.is_empty() {
        return Err(CoreError::BadRequest(
            "expression filters are not supported: filter by user or channel".into(),
        ));
    }
    let found = node
        .connections(rotor_core::node::ConnectionsQuery {
            user: p.user,
            channel: p.channel,
            limit: p.limit.unwrap_or(CONNECTIONS_LIMIT).min(CONNECTIONS_MAX),
            expiring_within: Vec::new(),
        })
        .await?;
    let mut listed = serde_json::Map::new();
    for c in found.connections {
        let channels: serde_json::Map<String, Value> =
            c.channels.into_iter().map(|ch| (ch, json!({}))).collect();
        let mut state = json!({ "channels": channels });
        if let Some(jti) = &c.jti {
            state["connection_token"] =
                json!({ "uid": jti, "issued_at": c.issued_at.unwrap_or(0) });
        }
        if let Some(meta) = c.meta {
            state["meta"] = serde_json::to_value(&meta).unwrap_or(Value::Null);
        }
        let mut entry = json!({
            "user": c.user,
            "transport": c.transport,
            "protocol": c.protocol,
            "state": state,
            "connected_at_ms": c.connected_at_ms,
            "node": c.node,
            "expire_at": c.expire_at,
        });
        if let Some(addr) = c.remote_addr {
            entry["remote_addr"] = json!(addr);
        }
        listed.insert(c.client, entry);
    }
    Ok(json!({
        "connections": listed,
        "total": found.total,
        "by_transport": found.by_transport,
    }))
}

/// `presence`: the clients in a channel.
async fn presence(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: ChannelParams = parse(params)?;
    required("channel", &p.channel)?;
    Ok(json!({ "presence": node.presence(&p.channel).await? }))
}

/// `presence_stats`: how many clients and distinct users a channel has.
async fn presence_stats(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: ChannelParams = parse(params)?;
    required("channel", &p.channel)?;
    let (num_clients, num_users) = node.presence_stats(&p.channel).await?;
    Ok(json!({ "num_clients": num_clients, "num_users": num_users }))
}

/// `history`: publications of a channel (since a position, limited, reversed) and its
/// position.
async fn history(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: HistoryParams = parse(params)?;
    required("channel", &p.channel)?;
    let page = node
        .history(&p.channel, p.limit, p.since, p.reverse, false)
        .await?;
    let mut out = position_json(&page.position);
    out["publications"] = publications_json(&page.publications);
    Ok(out)
}

/// `history_remove`: drops a channel's publications; the position stays.
async fn history_remove(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: ChannelParams = parse(params)?;
    required("channel", &p.channel)?;
    node.history_remove(&p.channel).await?;
    Ok(json!({}))
}

/// `channels`: the channels with subscribers on any node, by pattern (a survey of the nodes).
async fn channels(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: ChannelsParams = if is_null(params) {
        ChannelsParams::default()
    } else {
        parse(params)?
    };
    let mut channels = serde_json::Map::new();
    for (name, n) in node.channels(&p.pattern).await? {
        channels.insert(name, json!({ "num_clients": n }));
    }
    Ok(json!({ "channels": channels }))
}

/// `disconnect`: closes a user's connections (3503 unless a code is given).
async fn disconnect(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: DisconnectParams = parse(params)?;
    required("user", &p.target.user)?;
    let d = p.disconnect.unwrap_or_default();
    let (code, reason) = if d.code == 0 {
        let def = rotor_protocol::Disconnect::FORCE_NO_RECONNECT;
        (def.code, def.reason.to_string())
    } else {
        (d.code, d.reason)
    };
    node.control(Control::Disconnect {
        user: p.target.user,
        client: p.target.client,
        session: p.target.session,
        whitelist: p.whitelist,
        code,
        reason,
    })
    .await?;
    Ok(json!({}))
}

/// `unsubscribe`: ends a user's subscription to a channel on every node.
async fn unsubscribe(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: SubscribeParams = parse(params)?;
    required("user", &p.user)?;
    node.channel_options(&p.channel)?;
    node.control(Control::Unsubscribe {
        user: p.user,
        channel: p.channel,
        client: p.client,
        session: p.session,
    })
    .await?;
    Ok(json!({}))
}

/// `subscribe`: subscribes a user's connections to a channel (server-side).
async fn subscribe(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: SubscribeParams = parse(params)?;
    required("user", &p.user)?;
    node.channel_options(&p.channel)?;
    node.control(Control::Subscribe {
        user: p.user,
        channel: p.channel,
        client: p.client,
        session: p.session,
        info: p.info,
        data: p.data,
    })
    .await?;
    Ok(json!({}))
}

/// `refresh`: extends (or expires) a user's connections.
async fn refresh(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: RefreshParams = parse(params)?;
    required("user", &p.target.user)?;
    node.control(Control::Refresh {
        user: p.target.user,
        client: p.target.client,
        session: p.target.session,
        expired: p.expired,
        expire_at: p.expire_at,
    })
    .await?;
    Ok(json!({}))
}

/// `revoke_token`: refuses a token by its `jti` from now on and closes its connections.
async fn revoke_token(
    node: &Node,
    params: &RawValue,
    actor: Option<&str>,
) -> Result<Value, CoreError> {
    let p: RevokeParams = parse(params)?;
    node.revoke_token(
        &p.uid,
        p.expire_at,
        &p.user,
        &p.reason,
        actor.or(p.actor.as_deref()).unwrap_or("api"),
    )
    .await?;
    Ok(json!({}))
}

/// `invalidate_user_tokens`: refuses a user's tokens issued before a time.
async fn invalidate_user_tokens(
    node: &Node,
    params: &RawValue,
    actor: Option<&str>,
) -> Result<Value, CoreError> {
    let p: InvalidateParams = parse(params)?;
    let before = p.issued_before.unwrap_or_else(|| node.clock().unix());
    node.invalidate_user_tokens(
        &p.user,
        before,
        &p.channel,
        p.expire_at,
        &p.reason,
        actor.or(p.actor.as_deref()).unwrap_or("api"),
    )
    .await?;
    Ok(json!({}))
}

/// `revoked_tokens`: the revocation audit trail, newest first.
async fn revoked_tokens(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: RevokedTokensParams = if is_null(params) {
        RevokedTokensParams::default()
    } else {
        parse(params)?
    };
    let filter = rotor_core::storage::RevocationFilter {
        user: p.user.filter(|u| !u.is_empty()),
        jti: p.jti.filter(|j| !j.is_empty()),
        since: p.since,
        until: p.until,
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
        offset: p.offset,
    };
    let entries = node.storage().revocations.list(&filter).await?;
    let tokens: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            json!({"jti": e.jti, "user": e.user, "revoked_at": e.revoked_at, "expire_at": e.expire_at,
                   "reason": e.reason, "actor": e.actor, "kicked": e.kicked})
        })
        .collect();
    Ok(json!({ "tokens": tokens }))
}

#[derive(Deserialize)]
struct RevokeParams {
    /// The token's `jti`.
    #[serde(default)]
    uid: String,
    /// When the token itself expires (Unix seconds); the entry is dropped after it. 0 keeps it.
    #[serde(default)]
    expire_at: u64,
    #[serde(default)]
    reason: String,
    /// Whose token it was, when known (connections using it are looked up otherwise).
    #[serde(default)]
    user: String,
    /// Who revoked it, for the audit trail (default "api"; the CLI sends "cli:<user>").
    actor: Option<String>,
}

#[derive(Deserialize)]
struct InvalidateParams {
    #[serde(default)]
    user: String,
    issued_before: Option<u64>,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    expire_at: u64,
    #[serde(default)]
    reason: String,
    actor: Option<String>,
}

#[derive(Deserialize, Default)]
struct RevokedTokensParams {
    user: Option<String>,
    jti: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
}

async fn publish(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: PublishParams = parse(params)?;
    required("channel", &p.channel)?;
    let data = payload(p.data, p.b64data)?;
    let pos = node
        .publish(
            &p.channel,
            data,
            PublishOptions {
                skip_history: p.skip_history,
                tags: p.tags,
                info: None,
                idempotency_key: p.idempotency_key.filter(|k| !k.is_empty()),
                delta: p.delta,
            },
        )
        .await?;
    Ok(position_json(&pos))
}

async fn broadcast(node: &Node, params: &RawValue) -> Result<Value, CoreError> {
    let p: BroadcastParams = parse(params)?;
    if p.channels.is_empty() {
        return Err(CoreError::BadRequest("channels required".into()));
    }
    let data = payload(p.data, p.b64data)?;
    let mut responses = Vec::new();
    for ch in &p.channels {
        // The key is per channel: each channel of the broadcast is published once.
        let opts = PublishOptions {
            skip_history: p.skip_history,
            tags: p.tags.clone(),
            info: None,
            idempotency_key: p.idempotency_key.clone().filter(|k| !k.is_empty()),
            delta: p.delta,
        };
        responses.push(match node.publish(ch, data.clone(), opts).await {
            Ok(pos) => json!({ "result": position_json(&pos) }),
            Err(e) => json!({ "error": error_json(&e) }),
        });
    }
    Ok(json!({ "responses": responses }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
    }
}
