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
            delta: false,
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
        (any::<i32>(), proptest::option::of(arb_filter())),
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
                (flag, tf),
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
                tf,
                flag,
            },
        )
}

/// Tags filters as the SDKs send them: comparisons, and logical nodes over them.
fn arb_filter() -> impl Strategy<Value = FilterNode> {
    let leaf = (
        "[a-z]{0,4}",
        "(eq|in|gt|ex)",
        "[a-z0-9]{0,4}",
        proptest::collection::vec("[a-z]{0,3}", 0..3),
    )
        .prop_map(|(key, cmp, val, vals)| FilterNode {
            key,
            cmp,
            val,
            vals,
            ..FilterNode::default()
        });
    leaf.prop_recursive(3, 12, 3, |inner| {
        ("(and|or|not)", proptest::collection::vec(inner, 0..3)).prop_map(|(op, nodes)| {
            FilterNode {
                op,
                nodes,
                ..FilterNode::default()
            }
        })
    })
}

#[test]
fn protobuf_tags_filters_nest_only_so_deep() {
    let mut node = FilterNode {
        key: "k".into(),
        cmp: "ex".into(),
        ..FilterNode::default()
    };
    let nest = |n: FilterNode| FilterNode {
        op: "not".into(),
        nodes: vec![n],
        ..FilterNode::default()
    };
    for _ in 0..proto::MAX_FILTER_DEPTH {
        node = nest(node);
    }
    let sub = |tf: &FilterNode| {
        proto::encode(&Command {
            id: 1,
            subscribe: Some(SubscribeRequest {
                channel: "c".into(),
                tf: Some(tf.clone()),
                ..SubscribeRequest::default()
            }),
            ..Command::default()
        })
    };
    let decoded: Command = proto::decode(&sub(&node)).expect("at the limit");
    assert_eq!(decoded.subscribe.unwrap().tf.as_ref(), Some(&node));
    let too_deep = nest(node);
    assert!(matches!(
        proto::decode::<Command>(&sub(&too_deep)),
        Err(ProtoError::FilterTooDeep)
    ));
    // The JSON form is what centrifuge-js sends.
    let json = r#"{"id":2,"subscribe":{"channel":"c","tf":{"op":"and","nodes":[{"key":"ticker","cmp":"eq","val":"BTC"},{"key":"n","cmp":"in","vals":["1","2"]}]}}}"#;
    let cmds = decode_commands(json).unwrap();
    let tf = cmds[0].subscribe.as_ref().unwrap().tf.as_ref().unwrap();
    assert_eq!(tf.op, "and");
    assert_eq!(tf.nodes[1].vals, ["1", "2"]);
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
            delta: false,
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

// The Protobuf form, against bytes centrifuge-python's generated code (google.protobuf, from
// Centrifugo's client.proto) produced for the same messages.

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn protobuf_connect_command_decodes_as_the_python_sdk_encodes_it() {
    let bytes = hex(
        "080122270a05742e6b2e6e12077b2261223a317d1a0d0a0263681207180132016538052206707974686f6e",
    );
    let cmd: Command = proto::decode(&bytes).unwrap();
    assert_eq!(cmd.id, 1);
    let c = cmd.connect.as_ref().unwrap();
    assert_eq!((c.token.as_str(), c.name.as_str()), ("t.k.n", "python"));
    assert_eq!(c.data.as_ref().unwrap().json(), Some(r#"{"a":1}"#));
    let sub = &c.subs["ch"];
    assert_eq!(
        (sub.recover, sub.offset, sub.epoch.as_str()),
        (true, 5, "e")
    );
    // Fields in number order, as the generated code writes them: the same bytes back.
    assert_eq!(proto::encode(&cmd), bytes);
}

#[test]
fn protobuf_replies_are_byte_for_byte_what_the_generated_code_writes() {
    let push = Reply::push(Push {
        channel: "news".into(),
        publication: Some(Publication {
            delta: false,
            data: Raw::from_bytes(&[0x00, 0xff]),
            info: Some(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                conn_info: Some(Raw::from_json(r#"{"n":1}"#).unwrap()),
                chan_info: None,
            }),
            offset: 300,
            tags: BTreeMap::from([("k".into(), "v".into())]),
            time: 1_700_000_000_000,
        }),
        ..Push::default()
    });
    assert_eq!(
        proto::encode(&push),
        hex("222f12046e6577732227220200ff2a0f0a01751201631a077b226e223a317d30ac023a060a016b1201764880d095ffbc31")
    );
    // An empty result is still there: the client tells a subscribe reply by it.
    let sub = Reply {
        id: 2,
        subscribe: Some(SubscribeResult::default()),
        ..Reply::default()
    };
    assert_eq!(proto::encode(&sub), hex("08023200"));
    let err = Reply::error(
        3,
        Error {
            code: 103,
            message: "permission denied".into(),
            temporary: false,
        },
    );
    assert_eq!(
        proto::encode(&err),
        hex("08031215086712117065726d697373696f6e2064656e696564")
    );
    let presence = Reply {
        id: 5,
        presence: Some(PresenceResult {
            presence: BTreeMap::from([(
                "c1".into(),
                ClientInfo {
                    user: "u".into(),
                    client: "c1".into(),
                    conn_info: None,
                    chan_info: None,
                },
            )]),
        }),
        ..Reply::default()
    };
    assert_eq!(
        proto::encode(&presence),
        hex("08054a0f0a0d0a02633112070a017512026331")
    );
}

#[test]
fn protobuf_history_with_negative_limit_and_since_decodes() {
    let cmd: Command =
        proto::decode(&hex("080452130a016338ffffffffffffffffff014203120178")).unwrap();
    let h = cmd.history.unwrap();
    assert_eq!((h.channel.as_str(), h.limit), ("c", -1));
    assert_eq!(h.since.unwrap().epoch, "x");
}

#[test]
fn protobuf_ping_is_one_zero_byte_and_frames_are_length_delimited() {
    let mut frame = Vec::new();
    Protocol::Protobuf.frame_into(&mut frame, &[proto::encode(&Reply::default())]);
    assert_eq!(frame, [0u8]);
    let replies = Protocol::Protobuf.decode_replies(&[0, 0]).unwrap();
    assert_eq!(replies, vec![Reply::default(), Reply::default()]);
    let long = Reply::push(Push {
        channel: "c".repeat(200),
        ..Push::default()
    });
    let messages = [proto::encode(&long), proto::encode(&Reply::default())];
    let mut frame = Vec::new();
    Protocol::Protobuf.frame_into(&mut frame, &messages);
    assert_eq!(frame.len(), Protocol::Protobuf.frame_len(&messages));
    assert_eq!(
        Protocol::Protobuf.decode_replies(&frame).unwrap(),
        vec![long, Reply::default()]
    );
}

#[test]
fn protobuf_decoding_refuses_bad_input_without_allocating_what_it_claims() {
    let p = Protocol::Protobuf;
    // A length of 2^62 for the first message: refused as truncated, nothing allocated.
    let mut huge = Vec::new();
    proto::put_varint(&mut huge, 1 << 62);
    huge.push(0x08);
    assert!(matches!(
        p.decode_commands(&huge),
        Err(DecodeError::Proto(ProtoError::Truncated))
    ));
    // A nested length past the end of its message.
    assert!(p.decode_commands(&[0x03, 0x22, 0x7f, 0x00]).is_err());
    // Varints: unterminated, and longer than 10 bytes.
    assert!(matches!(
        p.decode_commands(&[0x80, 0x80]),
        Err(DecodeError::Proto(ProtoError::Truncated))
    ));
    assert!(matches!(
        p.decode_commands(&[0xff; 12]),
        Err(DecodeError::Proto(ProtoError::VarintTooLong))
    ));
    // Field number 0, a group wire type, a string that is not UTF-8, a wrong wire type.
    assert!(p.decode_commands(&[0x02, 0x00, 0x01]).is_err());
    assert!(p.decode_commands(&[0x01, 0x0b]).is_err());
    assert!(matches!(
        p.decode_commands(&[0x06, 0x22, 0x04, 0x0a, 0x02, 0xc3, 0x28]),
        Err(DecodeError::Proto(ProtoError::NotUtf8))
    ));
    assert!(p.decode_commands(&[0x02, 0x0a, 0x01]).is_err());
}

#[test]
fn protobuf_unknown_fields_are_skipped() {
    // id 7, then unknown fields of every wire type (varint 90, fixed64 91, bytes 92,
    // fixed32 93), then a ping.
    let mut body = vec![0x08, 0x07];
    body.extend([0xd0, 0x05, 0x01]);
    body.extend([0xd9, 0x05, 1, 2, 3, 4, 5, 6, 7, 8]);
    body.extend([0xe2, 0x05, 0x02, 0xaa, 0xbb]);
    body.extend([0xed, 0x05, 1, 2, 3, 4]);
    body.extend([0x5a, 0x00]);
    let cmd: Command = proto::decode(&body).unwrap();
    assert_eq!((cmd.id, cmd.method()), (7, MethodKind::Ping));
}

#[test]
fn binary_payloads_reach_json_clients_as_base64_strings() {
    let bin = Raw::from_bytes(&[0xde, 0xad, 0xbe, 0xef]);
    assert!(!bin.is_json());
    let p = Publication {
        data: bin.clone(),
        ..Publication::default()
    };
    assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"data":"3q2+7w=="}"#);
    assert_eq!(bin.get(), "\"3q2+7w==\"");
    // Bytes that are JSON stay JSON, for JSON clients too; text that is not JSON is binary.
    assert!(Raw::from_bytes(br#"{"a":[1,2]}"#).is_json());
    assert!(!Raw::from_bytes(b"hello").is_json());
    assert_eq!(Raw::from_base64("aGVsbG8=").unwrap().as_bytes(), b"hello");
    assert_eq!(Raw::from_base64("aGVsbG8").unwrap().as_bytes(), b"hello");
    assert!(Raw::from_base64("not base64!").is_err());
}

fn arb_binary() -> impl Strategy<Value = Raw> {
    proptest::collection::vec(any::<u8>(), 1..40).prop_map(|b| Raw::from_bytes(&b))
}

proptest! {
    #[test]
    fn commands_round_trip_through_a_protobuf_frame(cmds in proptest::collection::vec(arb_command(), 1..5)) {
        let messages: Vec<Vec<u8>> = cmds.iter().map(|c| Protocol::Protobuf.encode_command(c)).collect();
        let mut frame = Vec::new();
        Protocol::Protobuf.frame_into(&mut frame, &messages);
        prop_assert_eq!(Protocol::Protobuf.decode_commands(&frame).unwrap(), cmds);
    }

    #[test]
    fn replies_round_trip_through_a_protobuf_stream(replies in proptest::collection::vec(arb_reply(), 1..5)) {
        let messages: Vec<Vec<u8>> = replies.iter().map(|r| Protocol::Protobuf.encode_reply(r)).collect();
        let mut stream = Vec::new();
        Protocol::Protobuf.stream_into(&mut stream, &messages);
        prop_assert_eq!(Protocol::Protobuf.decode_replies(&stream).unwrap(), replies);
    }

    #[test]
    fn binary_data_round_trips_through_protobuf(data in arb_binary(), info in proptest::option::of(arb_binary())) {
        let r = Reply::push(Push {
            channel: "c".into(),
            publication: Some(Publication {
                data: data.clone(),
                info: Some(ClientInfo { conn_info: info.clone(), ..ClientInfo::default() }),
                ..Publication::default()
            }),
            ..Push::default()
        });
        let back: Reply = proto::decode(&proto::encode(&r)).unwrap();
        let p = back.push.unwrap().publication.unwrap();
        prop_assert_eq!(p.data.as_bytes(), data.as_bytes());
        prop_assert_eq!(p.info.unwrap().conn_info.map(|i| i.as_bytes().to_vec()), info.map(|i| i.as_bytes().to_vec()));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Protocol::Protobuf.decode_commands(&b);
        let _ = Protocol::Protobuf.decode_replies(&b);
        let _ = proto::decode::<EmulationRequest>(&b);
    }

    #[test]
    fn truncating_a_valid_frame_is_an_error_or_fewer_messages(cmds in proptest::collection::vec(arb_command(), 1..3), cut in 0usize..1000) {
        let messages: Vec<Vec<u8>> = cmds.iter().map(|c| Protocol::Protobuf.encode_command(c)).collect();
        let mut frame = Vec::new();
        Protocol::Protobuf.frame_into(&mut frame, &messages);
        let cut = cut % frame.len();
        if let Ok(decoded) = Protocol::Protobuf.decode_commands(&frame[..cut]) {
            prop_assert!(decoded.len() < cmds.len());
        }
    }
}

#[test]
fn a_push_reply_encodes_without_building_the_reply() {
    let push = Push {
        channel: "c".into(),
        publication: Some(Publication {
            data: Raw::from_value(&1),
            offset: 9,
            ..Publication::default()
        }),
        ..Push::default()
    };
    assert_eq!(
        proto::encode_push_reply(&push),
        proto::encode(&Reply::push(push))
    );
}
