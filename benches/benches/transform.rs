//! The cost of the transforms a route can apply, each against a baseline in the same run:
//! header rules against cloning the request's header map, strict JSON parsing and edits against
//! `serde_json::from_slice` of the same 2 KiB document, XML conversion against parsing the JSON
//! it becomes, schema validation against that parse, and rewrites against formatting the path.
//!
//! Run with `cargo bench -p gateway-benches --bench transform`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_transform::{
    headers::HeaderRules,
    json::{JsonEdits, JsonLimits, parse_strict},
    rewrite::{PathRewrite, QueryRules, Rewrite},
    template::Context,
    validate::Schema,
    xml::{JsonToXml, XmlLimits, json_to_xml, xml_to_json},
};
use http::HeaderMap;
use serde_json::{Value, json};

/// A ~2 KiB order document.
fn order() -> Value {
    let items: Vec<Value> = (0..16)
        .map(|i| json!({ "sku": format!("SKU-{i:05}"), "qty": i + 1, "price": 9.99, "note": "gift wrap please" }))
        .collect();
    json!({
        "order": {
            "id": "ord_7f3a9c",
            "customer": { "id": "cus_42", "name": "Ada Lovelace", "email": "ada@example.com" },
            "items": items,
            "debug": { "trace": "abc", "node": "n-1" },
            "status": "open"
        }
    })
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("x-request-id", "0af7651916cd43dd8448eb211c80319c"),
        ("x-debug", "1"),
        ("x-legacy-id", "42"),
        ("cookie", "session=abc"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("content-type", "application/json"),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    h
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform_headers");
    let headers = request_headers();
    let rules = HeaderRules::builder()
        .remove("x-debug")
        .unwrap()
        .rename("x-legacy-id", "x-id")
        .unwrap()
        .set("x-consumer", "${principal.consumer}")
        .unwrap()
        .set("x-route", "${route}")
        .unwrap()
        .build();
    let ctx = Context {
        consumer: Some("acme"),
        route: Some("orders"),
        ..Context::default()
    };
    g.bench_function("baseline_clone_10_headers", |b| {
        b.iter(|| black_box(headers.clone()));
    });
    g.bench_function("clone_and_apply_4_rules", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            rules.apply(&mut h, &ctx).unwrap();
            black_box(h)
        });
    });
    g.finish();
}

fn bench_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform_json");
    let doc = serde_json::to_vec(&order()).unwrap();
    let limits = JsonLimits::default();
    let edits = JsonEdits::builder()
        .remove("/order/debug")
        .unwrap()
        .rename("/order/status", "/order/state")
        .unwrap()
        .set("/order/source", json!("gateway"))
        .unwrap()
        .build();
    g.bench_function("baseline_serde_json_from_slice_2k", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(&doc)).unwrap()));
    });
    g.bench_function("parse_strict_2k", |b| {
        b.iter(|| black_box(parse_strict(black_box(&doc), &limits).unwrap()));
    });
    g.bench_function("parse_strict_edit_serialize_2k", |b| {
        b.iter(|| {
            let mut v = parse_strict(black_box(&doc), &limits).unwrap();
            edits.apply(&mut v).unwrap();
            black_box(serde_json::to_vec(&v).unwrap())
        });
    });
    g.finish();
}

fn bench_xml(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform_xml");
    let value = order();
    let xml = json_to_xml(&value, &JsonToXml::default()).unwrap();
    let as_json = serde_json::to_vec(&xml_to_json(&xml, &XmlLimits::default()).unwrap()).unwrap();
    g.bench_function("baseline_serde_json_from_slice_same_doc", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(&as_json)).unwrap()));
    });
    g.bench_function("xml_to_json_2k", |b| {
        b.iter(|| black_box(xml_to_json(black_box(&xml), &XmlLimits::default()).unwrap()));
    });
    g.bench_function("json_to_xml_2k", |b| {
        b.iter(|| black_box(json_to_xml(black_box(&value), &JsonToXml::default()).unwrap()));
    });
    g.finish();
}

fn bench_schema(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform_schema");
    let doc = serde_json::to_vec(&order()).unwrap();
    let schema = Schema::compile(&json!({
        "type": "object",
        "required": ["order"],
        "properties": { "order": {
            "type": "object",
            "required": ["id", "customer", "items"],
            "properties": {
                "id": { "type": "string", "pattern": "^ord_[0-9a-f]+$" },
                "customer": { "type": "object", "required": ["id"], "properties": { "email": { "type": "string", "format": "email" } } },
                "items": { "type": "array", "maxItems": 100, "items": {
                    "type": "object", "required": ["sku", "qty"],
                    "properties": { "sku": { "type": "string" }, "qty": { "type": "integer", "minimum": 1 } }
                } }
            }
        } }
    }))
    .unwrap();
    let value: Value = serde_json::from_slice(&doc).unwrap();
    g.bench_function("baseline_serde_json_from_slice_2k", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(&doc)).unwrap()));
    });
    g.bench_function("validate_2k_valid", |b| {
        b.iter(|| black_box(schema.validate(black_box(&value)).is_ok()));
    });
    g.finish();
}

fn bench_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform_rewrite");
    let rewrite = Rewrite {
        path: Some(PathRewrite::template("/internal/users/${path.id}/orders").unwrap()),
        query: QueryRules::builder()
            .remove("debug")
            .unwrap()
            .set("tenant", "${principal.consumer}")
            .unwrap()
            .build(),
    };
    let regex = Rewrite {
        path: Some(PathRewrite::regex(r"^/api/v1/(?P<rest>.+)$", "/v2/${rest}").unwrap()),
        ..Rewrite::default()
    };
    let params = vec![("id".to_owned(), "12345".to_owned())];
    let ctx = Context {
        consumer: Some("acme"),
        params: &params,
        ..Context::default()
    };
    g.bench_function("baseline_format_path", |b| {
        b.iter(|| {
            black_box(format!(
                "/internal/users/{}/orders?tenant=acme",
                black_box("12345")
            ))
        });
    });
    g.bench_function("template_path_and_query", |b| {
        b.iter(|| {
            black_box(
                rewrite
                    .apply("/users/12345", Some("q=tea&debug=1"), &ctx)
                    .unwrap(),
            )
        });
    });
    g.bench_function("regex_path", |b| {
        b.iter(|| black_box(regex.apply("/api/v1/orders/7/items", None, &ctx).unwrap()));
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_headers,
    bench_json,
    bench_xml,
    bench_schema,
    bench_rewrite
);
criterion_main!(benches);
