//! The broker conformance suite: what the node relies on from any broker (publications in
//! order and intact, join/leave, controls reaching every node, the cluster's node list and
//! node-addressed messages). Each function takes fresh brokers with no handler set yet and
//! panics on the first violation; [`crate::broker_suite`] stamps them as tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rotor_protocol::{ClientInfo, Publication, Raw};

use crate::broker::{Broker, BrokerHandler, Control, NodeInfo};

/// What a handler received, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Publication(String, Publication),
    Join(String, ClientInfo),
    Leave(String, ClientInfo),
    Control(Control),
    NodeMessage(String),
    Missed(String),
}

/// A node as the suite plays it: it records what its broker delivers and reports itself as
/// `uid`.
pub struct Recorder {
    uid: String,
    got: Mutex<Vec<Received>>,
}

impl Recorder {
    pub fn new(uid: &str) -> Arc<Recorder> {
        Arc::new(Recorder {
            uid: uid.to_string(),
            got: Mutex::new(Vec::new()),
        })
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    fn push(&self, r: Received) {
        self.got.lock().unwrap().push(r);
    }

    /// Waits (up to 5 s) until what was received is `want`, then checks nothing else came.
    pub async fn expect(&self, want: &[Received], what: &str) {
        for _ in 0..250 {
            if self.got.lock().unwrap().len() >= want.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.received(), want, "{what}");
    }

    /// [`expect`](Self::expect) for the publications of one channel (brokers order each
    /// channel's publications, not publications across channels).
    pub async fn expect_channel(&self, channel: &str, want: &[Received], what: &str) {
        let of_channel = || -> Vec<Received> {
            self.received()
                .into_iter()
                .filter(|r| matches!(r, Received::Publication(c, _) if c == channel))
                .collect()
        };
        for _ in 0..250 {
            if of_channel().len() >= want.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(of_channel(), want, "{what}");
    }
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, channel: &str, p: &Publication) {
        self.push(Received::Publication(channel.into(), p.clone()));
    }
    fn on_join(&self, channel: &str, info: &ClientInfo) {
        self.push(Received::Join(channel.into(), info.clone()));
    }
    fn on_leave(&self, channel: &str, info: &ClientInfo) {
        self.push(Received::Leave(channel.into(), info.clone()));
    }
    fn on_control(&self, control: &Control) {
        self.push(Received::Control(control.clone()));
    }
    fn on_node_message(&self, payload: &str) {
        self.push(Received::NodeMessage(payload.into()));
    }
    fn on_missed(&self, channel: &str) {
        self.push(Received::Missed(channel.into()));
    }
    fn node_info(&self) -> Option<NodeInfo> {
        Some(NodeInfo {
            uid: self.uid.clone(),
            name: format!("name-{}", self.uid),
            version: "test".into(),
            num_clients: 0,
            num_users: 0,
            num_channels: 0,
            num_subs: 0,
            uptime: 0,
        })
    }
}

/// The nodes the suite plays, by uid: brokers are made for the first one (single-node
/// tests) or both (cluster tests), in this order.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// Attaches a recorder to each broker, reporting the broker's node uid.
fn attach(brokers: &[Arc<dyn Broker>]) -> Vec<Arc<Recorder>> {
    brokers
        .iter()
        .zip(NODES)
        .map(|(b, uid)| {
            let r = Recorder::new(uid);
            b.set_handler(r.clone());
            r
        })
        .collect()
}

/// Every third publication carries binary data (a Protobuf client's), and every fifth a
/// binary `conn_info`: they must come out binary, byte for byte.
fn publication(n: u64) -> Publication {
    let mut info = (n % 2 == 1).then(|| client("u1", &format!("c{n}")));
    if let Some(i) = info.as_mut().filter(|_| n.is_multiple_of(5)) {
        i.conn_info = Some(Raw::binary(&[0xc3, 0x28, n as u8]));
    }
    Publication {
        delta: false,
        data: if n.is_multiple_of(3) {
            Raw::from_bytes(&[0x00, 0xff, b'{', n as u8])
        } else {
            Raw::from_value(&serde_json::json!({ "n": n, "text": "héllo \"quoted\"\n" }))
        },
        info,
        offset: n,
        tags: BTreeMap::from([("n".to_string(), n.to_string())]),
        time: 1_700_000_000_000 + n,
    }
}

fn client(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: Some(Raw::from_value(&serde_json::json!({ "name": user }))),
        chan_info: None,
    }
}

fn every_control() -> Vec<Control> {
    vec![
        Control::Disconnect {
            user: "u1".into(),
            client: Some("c1".into()),
            session: None,
            whitelist: vec!["c2".into()],
            code: 4000,
            reason: "bye".into(),
        },
        Control::Unsubscribe {
            user: "u1".into(),
            channel: "chat:1".into(),
            client: None,
            session: Some("s1".into()),
        },
        Control::Subscribe {
            user: "u1".into(),
            channel: "chat:1".into(),
            client: None,
            session: None,
            info: Some(Raw::from_value(&1)),
            data: Some(Raw::from_value(&serde_json::json!({ "x": [1, 2] }))),
        },
        Control::Revoke {
            jti: "j1".into(),
            expire_at: 5,
        },
        Control::InvalidateUser {
            user: "u2".into(),
            channel: String::new(),
            issued_before: 10,
            expire_at: 20,
        },
        Control::Refresh {
            user: "u3".into(),
            client: None,
            session: None,
            expired: false,
            expire_at: Some(99),
        },
    ]
}

/// Publications of a channel this node subscribed reach it in the order they were published,
/// every field as it was sent (data byte for byte, info, offset, tags, time).
pub async fn broker_delivers_publications_in_order_and_intact(brokers: Vec<Arc<dyn Broker>>) {
    let b = &brokers[0];
    let rec = &attach(&brokers)[0];
    b.subscribe("ordered").await.unwrap();
    let mut want = Vec::new();
    for n in 1..=50 {
        let p = publication(n);
        b.publish("ordered", &p).confirmed().await.unwrap();
        want.push(Received::Publication("ordered".into(), p));
    }
    rec.expect(&want, "publications in order, each once, intact")
        .await;
    for (got, sent) in rec.received().iter().zip(&want) {
        if let (Received::Publication(_, g), Received::Publication(_, s)) = (got, sent) {
            assert_eq!(g.data.as_bytes(), s.data.as_bytes(), "data byte for byte");
            assert_eq!(g.data.is_json(), s.data.is_json(), "binary stays binary");
        }
    }
}

/// Join and leave events of a subscribed channel arrive, in order, with the client's info.
pub async fn broker_delivers_join_and_leave(brokers: Vec<Arc<dyn Broker>>) {
    let b = &brokers[0];
    let rec = &attach(&brokers)[0];
    b.subscribe("room").await.unwrap();
    let (one, two) = (client("u1", "c1"), client("u2", "c2"));
    b.publish_join("room", &one).await.unwrap();
    b.publish_join("room", &two).await.unwrap();
    b.publish_leave("room", &one).await.unwrap();
    rec.expect(
        &[
            Received::Join("room".into(), one.clone()),
            Received::Join("room".into(), two),
            Received::Leave("room".into(), one),
        ],
        "join, join, leave",
    )
    .await;
}

/// A control reaches the node that sent it too (the connection it names may be local), every
/// kind of control with every field.
pub async fn broker_delivers_every_control_to_its_own_node(brokers: Vec<Arc<dyn Broker>>) {
    let b = &brokers[0];
    let rec = &attach(&brokers)[0];
    let want: Vec<Received> = every_control().into_iter().map(Received::Control).collect();
    for c in every_control() {
        b.publish_control(&c).await.unwrap();
    }
    rec.expect(&want, "every control, in order").await;
}

/// A node that is not up cannot be reached, and a node that shut down is no longer listed
/// (by itself either).
pub async fn broker_reaches_no_node_that_is_not_up(brokers: Vec<Arc<dyn Broker>>) {
    let b = &brokers[0];
    let rec = &attach(&brokers)[0];
    assert!(
        !b.send_to_node("no-such-node", "hello").await.unwrap(),
        "nobody takes a message for a node that is not up"
    );
    b.shutdown().await;
    let nodes = b.nodes().await.unwrap();
    assert!(
        nodes.iter().all(|n| n.uid != "node-a"),
        "a node that shut down is not listed: {nodes:?}"
    );
    assert!(
        rec.received().is_empty(),
        "a message for another node is not delivered here: {:?}",
        rec.received()
    );
}

/// Publications handed over one after another without waiting for each to be confirmed
/// (as the node does: it lets a channel's next publication through as soon as the previous
/// one is handed over) arrive in the order of the calls, and each is confirmed.
pub async fn broker_keeps_the_order_of_calls_not_of_confirmations(brokers: Vec<Arc<dyn Broker>>) {
    let b = &brokers[0];
    let rec = &attach(&brokers)[0];
    b.subscribe("pipelined").await.unwrap();
    b.subscribe("other").await.unwrap();
    let mut want = Vec::new();
    let mut sent = Vec::new();
    for n in 1..=200 {
        let channel = if n % 3 == 0 { "other" } else { "pipelined" };
        let p = publication(n);
        sent.push(b.publish(channel, &p));
        if channel == "pipelined" {
            want.push(Received::Publication(channel.into(), p));
        }
    }
    for s in sent {
        s.confirmed().await.unwrap();
    }
    rec.expect_channel("pipelined", &want, "in the order of the calls, each once")
        .await;
}

/// A publication reaches the nodes that subscribed its channel, and no node after it
/// unsubscribed. (What must not arrive is checked once a later publication, on a channel
/// the node still has, did arrive.)
pub async fn brokers_deliver_publications_only_where_subscribed(brokers: Vec<Arc<dyn Broker>>) {
    let (a, b) = (&brokers[0], &brokers[1]);
    let recs = attach(&brokers);
    b.subscribe("room").await.unwrap();
    b.subscribe("marker").await.unwrap();
    a.publish("room", &publication(1))
        .confirmed()
        .await
        .unwrap();
    a.publish("elsewhere", &publication(2))
        .confirmed()
        .await
        .unwrap();
    a.publish("marker", &publication(3))
        .confirmed()
        .await
        .unwrap();
    recs[1]
        .expect(
            &[
                Received::Publication("room".into(), publication(1)),
                Received::Publication("marker".into(), publication(3)),
            ],
            "the subscribed node gets its channels only",
        )
        .await;
    b.unsubscribe("room").await.unwrap();
    a.publish("room", &publication(4))
        .confirmed()
        .await
        .unwrap();
    b.publish("room", &publication(5))
        .confirmed()
        .await
        .unwrap();
    a.publish("marker", &publication(6))
        .confirmed()
        .await
        .unwrap();
    recs[1]
        .expect(
            &[
                Received::Publication("room".into(), publication(1)),
                Received::Publication("marker".into(), publication(3)),
                Received::Publication("marker".into(), publication(6)),
            ],
            "nothing of a channel after unsubscribing it",
        )
        .await;
    assert!(
        recs[0].received().is_empty(),
        "a node that never subscribed gets nothing: {:?}",
        recs[0].received()
    );
}

/// A control from one node reaches every node, the sender included.
pub async fn brokers_deliver_controls_to_every_node(brokers: Vec<Arc<dyn Broker>>) {
    let recs = attach(&brokers);
    let c = Control::Revoke {
        jti: "j2".into(),
        expire_at: 9,
    };
    brokers[1].publish_control(&c).await.unwrap();
    for rec in &recs {
        rec.expect(
            &[Received::Control(c.clone())],
            "every node gets the control",
        )
        .await;
    }
}

/// Waits (up to 5 s) until `broker` lists node `uid`.
async fn until_listed(broker: &Arc<dyn Broker>, uid: &str) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    for _ in 0..250 {
        nodes = broker.nodes().await.unwrap();
        if nodes.iter().any(|n| n.uid == uid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes
}

/// A message addressed to a node that is up (listed) reaches that node once, and no other.
pub async fn node_messages_reach_their_node_only(brokers: Vec<Arc<dyn Broker>>) {
    let recs = attach(&brokers);
    until_listed(&brokers[0], "node-b").await;
    until_listed(&brokers[1], "node-a").await;
    assert!(brokers[0].send_to_node("node-b", "for b").await.unwrap());
    assert!(brokers[1].send_to_node("node-a", "for a").await.unwrap());
    recs[1]
        .expect(
            &[Received::NodeMessage("for b".into())],
            "the addressed node",
        )
        .await;
    recs[0]
        .expect(
            &[Received::NodeMessage("for a".into())],
            "its own messages only, not the other node's",
        )
        .await;
}

/// Each node lists the other once it is up, with the numbers it reports, and stops listing
/// it once it shut down.
pub async fn nodes_are_listed_until_they_shut_down(brokers: Vec<Arc<dyn Broker>>) {
    let (a, b) = (&brokers[0], &brokers[1]);
    let _recs = attach(&brokers);
    let listed = |nodes: &[NodeInfo]| nodes.iter().any(|n| n.uid == "node-b");
    let nodes = until_listed(a, "node-b").await;
    let entry = nodes.iter().find(|n| n.uid == "node-b");
    assert_eq!(
        entry.map(|n| n.name.as_str()),
        Some("name-node-b"),
        "node-b is listed with what it reported: {nodes:?}"
    );
    b.shutdown().await;
    let nodes = a.nodes().await.unwrap();
    assert!(!listed(&nodes), "a node that shut down is gone: {nodes:?}");
}
