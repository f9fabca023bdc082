//! The wire format against what the SDKs send and expect: frames from centrifuge-js and
//! centrifuge-python, replies and pushes as they parse them, and round trips (proptest).

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::*;

#[test]
fn js_batched_connect_and_subscribe_frame_decodes_in_order() {
    let frame = r#"{"connect":{"token":"t","name":"js"},"id":9}
{"subscribe":{"channel":"chat:room","recover":true,"offset":2,"epoch":"b0760a04","flag":1},"id":10}"#;
    let cmds = decode_commands(frame).unwrap();
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0].method(), MethodKind::Connect);
    assert_eq!(cmds[0].id, 9);
    assert_eq!(cmds[0].connect.as_ref().unwrap().token, "t");
    let sub = cmds[1].subscribe.as_ref().unwrap();
    assert_eq!(
        (
            sub.channel.as_str(),
            sub.recover,
            sub.offset,
            sub.epoch.as_str()
        ),
        ("chat:room", true, 2, "b0760a04")
    );
}

#[test]
fn python_style_whitespace_and_key_order_do_not_matter() {
    let a =
        decode_commands(r#"{"id": 3, "history": {"channel": "c", "limit": 0, "reverse": false}}"#)
            .unwrap();
    let b =
        decode_commands(r#"{"history":{"reverse":false,"limit":0,"channel":"c"},"id":3}"#).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].method(), MethodKind::History);
}

#[test]
fn empty_command_is_a_pong_and_unknown_method_is_detected() {
    assert_eq!(decode_commands("{}").unwrap()[0].method(), MethodKind::Pong);
    assert_eq!(
        decode_commands(r#"{"id":4,"frobnicate":{}}"#).unwrap()[0].method(),
        MethodKind::Unknown
    );
}

#[test]
fn blank_lines_are_skipped_and_garbage_is_an_error() {
    assert_eq!(decode_commands("\n{}\n\n{}\n").unwrap().len(), 2);
    assert!(decode_commands("not json").is_err());
    assert!(decode_commands(r#"{"id":"x"}"#).is_err());
}

#[test]
fn empty_results_are_written_and_empty_fields_omitted() {
    let r = Reply {
        id: 3,
        subscribe: Some(SubscribeResult::default()),
        ..Reply::default()
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"id":3,"subscribe":{}}"#
    );
    let r = Reply {
        id: 4,
        presence: Some(PresenceResult::default()),
        ..Reply::default()
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"id":4,"presence":{"presence":{}}}"#
    );
    assert_eq!(serde_json::to_string(&Reply::default()).unwrap(), "{}");
    let e = Reply::error(5, ErrorCode::TokenExpired.to_error());
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"id":5,"error":{"code":109,"message":"token expired"}}"#
    );
}

#[test]
fn publication_data_is_raw_json_and_offsets_are_numbers() {
    let p = Reply::push(Push {
        channel: "news".into(),
        publication: Some(Publication {
            data: Raw::from_json(r#"{"text": "hi"}"#).unwrap(),
            info: None,
            offset: 7,
            tags: BTreeMap::new(),
            time: 0,
        }),
        ..Push::default()
    });
    assert_eq!(
        serde_json::to_string(&p).unwrap(),
        r#"{"push":{"channel":"news","pub":{"data":{"text": "hi"},"offset":7}}}"#
    );
    let back: Reply =
        serde_json::from_str(r#"{"push":{"channel":"n","pub":{"data":1,"offset":"12"}}}"#).unwrap();
    assert_eq!(back.push.unwrap().publication.unwrap().offset, 12);
}

#[test]
fn raw_json_loses_line_breaks_so_frames_stay_intact() {
    let raw = Raw::from_json("{\n  \"a\": \"x\\ny\"\n}").unwrap();
    assert!(!raw.get().contains('\n'));
    let v: serde_json::Value = raw.parse().unwrap();
    assert_eq!(v["a"], "x\ny");
    let frame = encode_frame(&[Reply::default(), Reply::default()]);
    assert_eq!(frame, "{}\n{}");
}

fn arb_raw() -> impl Strategy<Value = Raw> {
    prop_oneof![
        any::<i64>().prop_map(|n| Raw::from_value(&n)),
        ".{0,20}".prop_map(|s| Raw::from_value(&s)),
        (".{0,8}", any::<bool>())
            .prop_map(|(k, b)| Raw::from_value(&serde_json::json!({ k: b, "n": null }))),
    ]
}

fn arb_subscribe() -> impl Strategy<Value = SubscribeRequest> {
    (
        "[a-z:#$,_-]{0,12}",
        "[a-zA-Z0-9._-]{0,10}",
        any::<bool>(),
        "[a-f0-9]{0,8}",
        any::<u64>(),
        proptest::option::of(arb_raw()),
        any::<(bool, bool, bool)>(),
        any::<i32>(),
    )
        .prop_map(
            |(
                channel,
                token,
                recover,
                epoch,
                offset,
                data,
                (positioned, recoverable, join_leave),
                flag,
            )| SubscribeRequest {
                channel,
                token,
                recover,
                epoch,
                offset,
                data,
                positioned,
                recoverable,
                join_leave,
                delta: String::new(),
                flag,
            },
        )
}

fn arb_command() -> impl Strategy<Value = Command> {
    let id = any::<u32>();
    prop_oneof![
        (id, ".{0,30}", proptest::option::of(arb_raw()), "[a-z]{0,5}").prop_map(
            |(id, token, data, name)| Command {
                id,
                connect: Some(ConnectRequest {
                    token,
                    data,
                    name,
                    ..ConnectRequest::default()
                }),
                ..Command::default()
            }
        ),
        (id, arb_subscribe()).prop_map(|(id, s)| Command {
            id,
            subscribe: Some(s),
            ..Command::default()
        }),
        (id, ".{0,10}", arb_raw()).prop_map(|(id, channel, data)| Command {
            id,
            publish: Some(PublishRequest { channel, data }),
            ..Command::default()
        }),
        (
            id,
            ".{0,10}",
            -1i32..100,
            proptest::option::of((any::<u64>(), "[a-z]{0,4}")),
            any::<bool>()
        )
            .prop_map(|(id, channel, limit, since, reverse)| Command {
                id,
                history: Some(HistoryRequest {
                    channel,
                    limit,
                    since: since.map(|(offset, epoch)| StreamPosition { offset, epoch }),
                    reverse,
                }),
                ..Command::default()
            }),
        (id, ".{0,40}").prop_map(|(id, token)| Command {
            id,
            refresh: Some(RefreshRequest { token }),
            ..Command::default()
        }),
        (id, ".{0,10}", ".{0,10}").prop_map(|(id, channel, token)| Command {
            id,
            sub_refresh: Some(SubRefreshRequest { channel, token }),
            ..Command::default()
        }),
    ]
}

fn arb_publication() -> impl Strategy<Value = Publication> {
    (
        arb_raw(),
        any::<u64>(),
        proptest::option::of(("[a-z0-9]{0,6}", "[a-f0-9-]{0,10}")),
        proptest::collection::btree_map("[a-z]{1,4}", ".{0,4}", 0..3),
    )
        .prop_map(|(data, offset, info, tags)| Publication {
            data,
            offset,
            info: info.map(|(user, client)| ClientInfo {
                user,
                client,
                conn_info: None,
                chan_info: None,
            }),
            tags,
            time: 0,
        })
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (1u32.., any::<(u32, bool)>(), "[a-z ]{0,10}").prop_map(
            |(id, (code, temporary), message)| Reply::error(
                id,
                Error {
                    code,
                    message,
                    temporary
                }
            )
        ),
        (
            1u32..,
            "[a-f0-9-]{1,36}",
            any::<bool>(),
            any::<u32>(),
            0u32..100
        )
            .prop_map(|(id, client, expires, ttl, ping)| Reply {
                id,
                connect: Some(ConnectResult {
                    client,
                    expires,
                    ttl,
                    ping,
                    pong: ping > 0,
                    ..ConnectResult::default()
                }),
                ..Reply::default()
            }),
        (
            1u32..,
            proptest::collection::vec(arb_publication(), 0..4),
            "[a-f0-9]{0,8}",
            any::<u64>()
        )
            .prop_map(|(id, publications, epoch, offset)| Reply {
                id,
                subscribe: Some(SubscribeResult {
                    recoverable: true,
                    publications,
                    epoch,
                    offset,
                    ..SubscribeResult::default()
                }),
                ..Reply::default()
            }),
        ("[a-z:]{0,10}", arb_publication()).prop_map(|(channel, p)| Reply::push(Push {
            channel,
            publication: Some(p),
            ..Push::default()
        })),
        (3000u32..5000, ".{0,20}").prop_map(|(code, reason)| Reply::push(Push {
            disconnect: Some(DisconnectPush { code, reason }),
            ..Push::default()
        })),
        Just(Reply::default()),
    ]
}

proptest! {
    #[test]
    fn commands_round_trip_through_a_frame(cmds in proptest::collection::vec(arb_command(), 1..5)) {
        let frame = encode_frame(&cmds);
        prop_assert!(!frame.ends_with('\n'));
        prop_assert_eq!(decode_commands(&frame).unwrap(), cmds);
    }

    #[test]
    fn replies_round_trip_and_frames_have_no_blank_lines(replies in proptest::collection::vec(arb_reply(), 1..5)) {
        let frame = encode_frame(&replies);
        prop_assert!(frame.split('\n').all(|l| !l.trim().is_empty()));
        prop_assert_eq!(frame.split('\n').count(), replies.len());
        prop_assert_eq!(decode_replies(&frame).unwrap(), replies);
    }

    #[test]
    fn decoding_arbitrary_text_never_panics(s in ".{0,200}") {
        let _ = decode_commands(&s);
    }
}
