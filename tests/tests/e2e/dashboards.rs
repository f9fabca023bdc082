//! The Grafana dashboards against Grafana's published dashboard schema (@grafana/schema's
//! `Dashboard` type, checked by the TypeScript compiler: tests/sdk/check_dashboards.js) and
//! importable anywhere (every datasource through the `datasource` variable).

use std::path::Path;
use std::time::Duration;

use rotor_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

async fn check(dir: &Path) -> (Vec<Value>, Value) {
    let mut s = Script::node(
        "check_dashboards.js",
        &[("DASHBOARDS", dir.display().to_string())],
    );
    let done = s.expect("done", T).await;
    let dashboards: Vec<Value> = s
        .seen
        .iter()
        .filter(|e| e["event"] == "dashboard")
        .cloned()
        .collect();
    assert!(
        !s.seen.iter().any(|e| e["event"] == "general_error"),
        "the checker itself failed: {:?}",
        s.seen
    );
    s.finish(T).await;
    (dashboards, done)
}

#[tokio::test]
async fn the_dashboards_match_grafanas_schema_and_template_their_datasource() {
    if !sdks_available("the_dashboards_match_grafanas_schema") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    let (dashboards, done) = check(&dir).await;
    assert_eq!(dashboards.len(), files, "{dashboards:?}");
    for d in &dashboards {
        assert_eq!(d["errors"], serde_json::json!([]), "{d}");
        assert!(d["panels"].as_u64().unwrap() > 0, "{d}");
    }
    assert_eq!(done["errors"], 0);
}

#[tokio::test]
async fn the_schema_check_finds_what_grafana_would_refuse() {
    if !sdks_available("the_schema_check_finds_what_grafana_would_refuse") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("rotor-dashboards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/rotor-overview.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let broken = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut d = original.clone();
        change(&mut d);
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&d).unwrap()).unwrap();
    };
    broken("a-unknown-field.json", &|d| d["refreshh"] = "5s".into());
    broken("b-wrong-type.json", &|d| {
        d["panels"][0]["gridPos"]["h"] = "eight".into()
    });
    broken("c-fixed-datasource.json", &|d| {
        d["panels"][1]["datasource"] =
            serde_json::json!({"type": "prometheus", "uid": "P1809F7CD0C75ACF3"})
    });
    let (dashboards, done) = check(&dir).await;
    let errors = |i: usize| dashboards[i]["errors"].to_string();
    assert!(errors(0).contains("refreshh"), "{}", errors(0));
    assert!(
        errors(1).contains("not assignable to type 'number'"),
        "{}",
        errors(1)
    );
    assert!(errors(2).contains("use ${datasource}"), "{}", errors(2));
    assert_eq!(done["errors"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}
