//! Publication tags filters: what a subscriber's `tf` (a [`FilterNode`] tree) means, checked
//! once at subscribe ([`TagsFilter::compile`]: a bad filter is error 107) and evaluated at
//! fan-out against each publication's tags ([`TagsFilter::matches`]). Centrifugo's operators
//! and rules (`eq neq in nin ex nex sw ew ct gt gte lt lte`, `and or not`); numbers are
//! compared as exact decimals. A filter narrows what a subscriber receives; it grants
//! nothing. No IO, no allocation while matching.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use rotor_protocol::FilterNode;

/// How deep a filter may nest (a leaf alone is depth 1).
pub const MAX_DEPTH: usize = 32;
/// How many nodes and `vals` entries a filter may hold in all: it runs for every
/// publication of the channel, on the fan-out path.
pub const MAX_ITEMS: usize = 1024;

/// A checked filter, ready to run. Equal filters are equal values (and hash alike), so
/// the hub keeps one copy per channel of the filters its subscribers share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagsFilter(Node);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Leaf { key: String, cmp: Cmp },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Cmp {
    Eq(String),
    Neq(String),
    In(Vec<String>),
    Nin(Vec<String>),
    Ex,
    Nex,
    Sw(String),
    Ew(String),
    Ct(String),
    /// The ordering the tag must have against the number, as `Ordering` values it may take.
    Num(Decimal, &'static [Ordering]),
}

impl TagsFilter {
    /// Checks a filter as the client sent it; the error says what is wrong with it.
    pub fn compile(node: &FilterNode) -> Result<TagsFilter, String> {
        let mut items = 0;
        compile(node, 1, &mut items).map(TagsFilter)
    }

    /// Whether a publication with these tags passes.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.0.matches(tags)
    }
}

fn compile(n: &FilterNode, depth: usize, items: &mut usize) -> Result<Node, String> {
    if depth > MAX_DEPTH {
        return Err(format!("tags filter nested deeper than {MAX_DEPTH} levels"));
    }
    *items += 1 + n.vals.len();
    if *items > MAX_ITEMS {
        return Err(format!(
            "tags filter has more than {MAX_ITEMS} nodes and values"
        ));
    }
    let children = |items: &mut usize| {
        n.nodes
            .iter()
            .map(|c| compile(c, depth + 1, items))
            .collect::<Result<Vec<_>, _>>()
    };
    let logical_only = || {
        if n.key.is_empty() && n.cmp.is_empty() && n.val.is_empty() && n.vals.is_empty() {
            Ok(())
        } else {
            Err(format!("tags filter `{}` node takes only nodes", n.op))
        }
    };
    match n.op.as_str() {
        "and" | "or" => {
            logical_only()?;
            if n.nodes.is_empty() {
                return Err(format!("tags filter `{}` needs at least one node", n.op));
            }
            let c = children(items)?;
            Ok(if n.op == "and" {
                Node::And(c)
            } else {
                Node::Or(c)
            })
        }
        "not" => {
            logical_only()?;
            if n.nodes.len() != 1 {
                return Err("tags filter `not` needs exactly one node".into());
            }
            let mut c = children(items)?;
            Ok(Node::Not(Box::new(c.remove(0))))
        }
        "" => {
            if !n.nodes.is_empty() {
                return Err("tags filter comparison has nodes (set `op`)".into());
            }
            leaf(n).map(|cmp| Node::Leaf {
                key: n.key.clone(),
                cmp,
            })
        }
        other => Err(format!("tags filter has an unknown op `{other}`")),
    }
}

fn leaf(n: &FilterNode) -> Result<Cmp, String> {
    let cmp = n.cmp.as_str();
    let needs_key = !matches!(cmp, "ex" | "nex");
    if cmp.is_empty() {
        return Err("tags filter comparison without `cmp`".into());
    }
    if needs_key && n.key.is_empty() {
        return Err(format!("tags filter `{cmp}` without `key`"));
    }
    let one = || {
        if n.val.is_empty() || !n.vals.is_empty() {
            Err(format!("tags filter `{cmp}` needs `val` (and no `vals`)"))
        } else {
            Ok(n.val.clone())
        }
    };
    let many = || {
        if n.vals.is_empty() || !n.val.is_empty() {
            Err(format!("tags filter `{cmp}` needs `vals` (and no `val`)"))
        } else {
            Ok(n.vals.clone())
        }
    };
    let number = |allowed: &'static [Ordering]| {
        let v = one()?;
        Decimal::parse(&v)
            .map(|d| Cmp::Num(d, allowed))
            .ok_or_else(|| format!("tags filter `{cmp}` needs a decimal number, not `{v}`"))
    };
    use Ordering::{Equal, Greater, Less};
    Ok(match cmp {
        "eq" => Cmp::Eq(one()?),
        "neq" => Cmp::Neq(one()?),
        "in" => Cmp::In(many()?),
        "nin" => Cmp::Nin(many()?),
        "ex" | "nex" => {
            if !n.val.is_empty() || !n.vals.is_empty() {
                return Err(format!("tags filter `{cmp}` takes no `val` or `vals`"));
            }
            if cmp == "ex" {
                Cmp::Ex
            } else {
                Cmp::Nex
            }
        }
        "sw" => Cmp::Sw(one()?),
        "ew" => Cmp::Ew(one()?),
        "ct" => Cmp::Ct(one()?),
        "gt" => number(&[Greater])?,
        "gte" => number(&[Greater, Equal])?,
        "lt" => number(&[Less])?,
        "lte" => number(&[Less, Equal])?,
        other => return Err(format!("tags filter has an unknown cmp `{other}`")),
    })
}

impl Node {
    fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.matches(tags)),
            Node::Or(nodes) => nodes.iter().any(|n| n.matches(tags)),
            Node::Not(n) => !n.matches(tags),
            Node::Leaf { key, cmp } => {
                let tag = tags.get(key).map(String::as_str);
                match cmp {
                    Cmp::Eq(v) => tag == Some(v),
                    Cmp::Neq(v) => tag != Some(v),
                    // A missing tag reads as "" here (Centrifugo's rule).
                    Cmp::In(vals) => vals.iter().any(|v| v == tag.unwrap_or("")),
                    Cmp::Nin(vals) => !vals.iter().any(|v| v == tag.unwrap_or("")),
                    Cmp::Ex => tag.is_some(),
                    Cmp::Nex => tag.is_none(),
                    Cmp::Sw(v) => tag.is_some_and(|t| t.starts_with(v.as_str())),
                    Cmp::Ew(v) => tag.is_some_and(|t| t.ends_with(v.as_str())),
                    Cmp::Ct(v) => tag.is_some_and(|t| t.contains(v.as_str())),
                    Cmp::Num(v, allowed) => tag
                        .and_then(Decimal::parse_ref)
                        .is_some_and(|t| allowed.contains(&t.cmp(&v.as_ref()))),
                }
            }
        }
    }
}

/// An exact decimal number (`-12.50`, `+3`, `.5`): its sign, and its digits without leading
/// zeros before the point and trailing zeros after it, so that equal numbers are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Decimal {
    negative: bool,
    int: String,
    frac: String,
}

/// A [`Decimal`] read in place (matching allocates nothing).
#[derive(PartialEq)]
struct DecimalRef<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
}

impl Decimal {
    fn parse(s: &str) -> Option<Decimal> {
        Decimal::parse_ref(s).map(|d| Decimal {
            negative: d.negative,
            int: d.int.to_owned(),
            frac: d.frac.to_owned(),
        })
    }

    fn parse_ref(s: &str) -> Option<DecimalRef<'_>> {
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) {
            return None;
        }
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        Some(DecimalRef {
            // -0 is 0.
            negative: negative && !(int.is_empty() && frac.is_empty()),
            int,
            frac,
        })
    }

    fn as_ref(&self) -> DecimalRef<'_> {
        DecimalRef {
            negative: self.negative,
            int: &self.int,
            frac: &self.frac,
        }
    }
}

impl DecimalRef<'_> {
    fn cmp(&self, other: &DecimalRef<'_>) -> Ordering {
        let magnitude = self
            .int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(other.int))
            .then_with(|| self.frac.cmp(other.frac));
        match (self.negative, other.negative) {
            (false, false) => magnitude,
            (true, true) => magnitude.reverse(),
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            val: val.into(),
            ..FilterNode::default()
        }
    }

    fn set(key: &str, cmp: &str, vals: &[&str]) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            vals: vals.iter().map(|v| v.to_string()).collect(),
            ..FilterNode::default()
        }
    }

    fn op(op: &str, nodes: Vec<FilterNode>) -> FilterNode {
        FilterNode {
            op: op.into(),
            nodes,
            ..FilterNode::default()
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(f: FilterNode, t: &[(&str, &str)]) -> bool {
        TagsFilter::compile(&f).unwrap().matches(&tags(t))
    }

    #[test]
    fn comparisons_follow_centrifugo() {
        let t = [("ticker", "BTC"), ("price", "50000.5"), ("empty", "")];
        assert!(check(leaf("ticker", "eq", "BTC"), &t));
        assert!(!check(leaf("ticker", "eq", "ETH"), &t));
        assert!(!check(leaf("missing", "eq", "x"), &t));
        assert!(check(leaf("ticker", "neq", "ETH"), &t));
        assert!(
            check(leaf("missing", "neq", "x"), &t),
            "missing is not equal"
        );
        assert!(check(set("ticker", "in", &["ETH", "BTC"]), &t));
        assert!(!check(set("missing", "in", &["ETH"]), &t));
        assert!(
            check(set("missing", "in", &["", "ETH"]), &t),
            "missing reads as \"\""
        );
        assert!(check(set("ticker", "nin", &["ETH"]), &t));
        assert!(!check(set("missing", "nin", &[""]), &t));
        assert!(check(leaf("empty", "ex", ""), &t));
        assert!(!check(leaf("missing", "ex", ""), &t));
        assert!(check(leaf("missing", "nex", ""), &t));
        assert!(check(leaf("ticker", "sw", "BT"), &t));
        assert!(check(leaf("ticker", "ew", "TC"), &t));
        assert!(check(leaf("ticker", "ct", "T"), &t));
        assert!(!check(leaf("missing", "ct", "T"), &t));
        assert!(check(leaf("price", "gt", "50000"), &t));
        assert!(!check(leaf("price", "gt", "50000.5"), &t));
        assert!(check(leaf("price", "gte", "50000.50"), &t));
        assert!(check(leaf("price", "lt", "100000"), &t));
        assert!(check(leaf("price", "lte", "50000.5"), &t));
        assert!(!check(leaf("ticker", "lt", "1"), &t), "not a number: false");
        assert!(!check(leaf("missing", "lt", "1"), &t));
    }

    #[test]
    fn decimals_compare_exactly() {
        let c = |a: &str, b: &str| {
            Decimal::parse_ref(a)
                .unwrap()
                .cmp(&Decimal::parse_ref(b).unwrap())
        };
        assert_eq!(c("10", "9"), Ordering::Greater);
        assert_eq!(c("-10", "-9"), Ordering::Less);
        assert_eq!(c("-0", "0.000"), Ordering::Equal);
        assert_eq!(c("007.10", "7.1"), Ordering::Equal);
        assert_eq!(c(".5", "0.49"), Ordering::Greater);
        assert_eq!(c("-1", "1"), Ordering::Less);
        // Beyond f64's precision.
        assert_eq!(
            c("12345678901234567890.000000001", "12345678901234567890"),
            Ordering::Greater
        );
        for bad in ["", "-", ".", "1e5", "1.2.3", "abc", " 1", "0x10"] {
            assert!(Decimal::parse_ref(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn logical_nodes() {
        let btc = leaf("ticker", "eq", "BTC");
        let big = leaf("price", "gt", "100");
        let f = op("and", vec![btc.clone(), big.clone()]);
        assert!(check(f.clone(), &[("ticker", "BTC"), ("price", "101")]));
        assert!(!check(f, &[("ticker", "BTC"), ("price", "99")]));
        let f = op("or", vec![btc.clone(), big]);
        assert!(check(f.clone(), &[("price", "101")]));
        assert!(!check(f, &[("price", "1")]));
        let f = op("not", vec![btc]);
        assert!(check(f.clone(), &[("ticker", "ETH")]));
        assert!(!check(f, &[("ticker", "BTC")]));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        let bad = [
            (FilterNode::default(), "without `cmp`"),
            (leaf("", "eq", "x"), "without `key`"),
            (leaf("k", "eq", ""), "needs `val`"),
            (set("k", "eq", &["x"]), "needs `val`"),
            (leaf("k", "in", "x"), "needs `vals`"),
            (leaf("k", "ex", "x"), "takes no"),
            (leaf("k", "like", "x"), "unknown cmp"),
            (leaf("k", "gt", "ten"), "decimal"),
            (op("and", vec![]), "at least one"),
            (op("or", vec![]), "at least one"),
            (
                op("not", vec![leaf("a", "ex", ""), leaf("b", "ex", "")]),
                "exactly one",
            ),
            (op("xor", vec![leaf("a", "ex", "")]), "unknown op"),
            (
                FilterNode {
                    op: "and".into(),
                    key: "k".into(),
                    nodes: vec![leaf("a", "ex", "")],
                    ..FilterNode::default()
                },
                "only nodes",
            ),
        ];
        for (f, why) in bad {
            let err = TagsFilter::compile(&f).unwrap_err();
            assert!(err.contains(why), "{f:?}: {err}");
        }
        // `ex` and `nex` need no key (they then ask about the tag "").
        assert!(TagsFilter::compile(&leaf("", "ex", "")).is_ok());
    }

    #[test]
    fn size_and_depth_are_bounded() {
        let mut deep = leaf("a", "ex", "");
        for _ in 1..MAX_DEPTH {
            deep = op("not", vec![deep]);
        }
        assert!(TagsFilter::compile(&deep).is_ok());
        let deeper = op("not", vec![deep]);
        assert!(TagsFilter::compile(&deeper).unwrap_err().contains("deeper"));
        let vals: Vec<String> = (0..MAX_ITEMS).map(|i| i.to_string()).collect();
        let wide = FilterNode {
            key: "k".into(),
            cmp: "in".into(),
            vals,
            ..FilterNode::default()
        };
        assert!(TagsFilter::compile(&wide)
            .unwrap_err()
            .contains("more than"));
    }
}
