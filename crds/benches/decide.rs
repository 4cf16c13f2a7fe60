//! The decision function alone, for small and large policies: `cargo bench -p tollgate-api`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tollgate_api::{Call, DefaultAction, Identity, NoCounters, PolicySet, PolicySpec};

/// `n` listed tools, each with a condition and a rate limit (and a regex when asked), plus a
/// glob and a `"*"` rule, as a realistic policy has.
fn policy(n: usize, regex: bool) -> PolicySet {
    let mut y = String::from(
        "default: deny\nhide: [admin_reset]\ntools:\n  \"*\": { rules: [ { name: global, rateLimit: 1000/second } ] }\n  \"get_*\": { rules: [] }\n",
    );
    for i in 0..n {
        y.push_str(&format!("  tool_{i}:\n    rules:\n      - {{ name: cap, conditions: [ {{ path: args.amount, op: lte, value: 1000 }}, {{ path: args.currency, op: in, value: [usd, eur] }} ] }}\n      - {{ name: rate, rateLimit: 100/minute }}\n"));
        if regex {
            y.push_str("      - { name: no drop, action: deny, conditions: [ { path: args.note, op: regex, value: \"(?i)\\\\bdrop\\\\b\" } ] }\n");
        }
    }
    let spec: PolicySpec = tollgate_api::load::yaml_from_str(&y).expect("spec");
    PolicySet::compile(1, DefaultAction::Deny, [("bench", &spec)]).expect("compiles")
}

fn bench(c: &mut Criterion) {
    let args = json!({"amount": 250, "currency": "usd", "note": "monthly invoice"});
    let who = Identity::subject("system:serviceaccount:agents:bot");
    for (name, set) in [
        ("10 tools", policy(10, false)),
        ("1000 tools", policy(1000, false)),
        ("1000 tools with regexes", policy(1000, true)),
    ] {
        let mut g = c.benchmark_group(format!("decide/{name}"));
        g.bench_function("listed tool with conditions and limits", |b| {
            b.iter(|| {
                black_box(set.decide(&Call::new(black_box("tool_7"), &args), &who, &NoCounters))
            })
        });
        g.bench_function("glob-listed tool", |b| {
            b.iter(|| {
                black_box(set.decide(&Call::new(black_box("get_issue"), &args), &who, &NoCounters))
            })
        });
        g.bench_function("unlisted tool (default deny)", |b| {
            b.iter(|| {
                black_box(set.decide(&Call::new(black_box("not_there"), &args), &who, &NoCounters))
            })
        });
        g.bench_function("tools/list visibility", |b| {
            b.iter(|| black_box(set.visible(black_box("tool_7"), &who)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
