//! Property: random rows of every supported column type, staged through
//! `/writes` and promoted at a checkpoint, are stored exactly as PostgreSQL
//! itself stores the same JSON (`json_populate_record` into an identical
//! twin table, one parameterised statement per row). Row text is built by
//! hand, so numbers keep every digit as a processor would send them.
//!
//! `ROUNDTRIP_CASES` sets the number of batches (default 12, in CI).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::TestApp;

const COLUMNS: &str = "id int PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, f8 double precision,
    f4 real, num numeric, t text, vc varchar(40), b boolean, j jsonb, js json, ta text[], na numeric[],
    ia int8[], u uuid, d date, ts timestamptz";

/// A value, or JSON `null` one time in five.
fn nullable(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![1 => Just("null".to_owned()), 4 => value]
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 \\\\\t\n\r\"'{},é😀]{0,16}".prop_map(|s| json_string(&s))
}

/// A decimal of up to 30 integer and 20 fraction digits, as sent.
fn decimal() -> impl Strategy<Value = String> {
    (
        "-?(0|[1-9][0-9]{0,29})",
        proptest::option::of("[0-9]{1,20}"),
    )
        .prop_map(|(int, frac)| match frac {
            Some(frac) => format!("{int}.{frac}"),
            None => int,
        })
}

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        decimal(),
        "[a-z\\\\\"\n]{0,8}".prop_map(|s| json_string(&s)),
        // An escaped backslash before u0000: legal JSON without a NUL.
        Just(r#""\\u0000""#.to_owned()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            proptest::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(key, value)| format!("{}: {value}", json_string(&key)))
                    .collect();
                format!("{{{}}}", fields.join(", "))
            }),
        ]
    })
}

fn array(item: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    proptest::collection::vec(nullable(item), 0..5)
        .prop_map(|items| format!("[{}]", items.join(",")))
}

/// One row's JSON text (every column present) for id `id`.
fn row() -> impl Strategy<Value = Vec<String>> {
    (
        (
            nullable(any::<i16>().prop_map(|v| v.to_string())),
            nullable(any::<i32>().prop_map(|v| v.to_string())),
            nullable(any::<i64>().prop_map(|v| v.to_string())),
            nullable(
                any::<f64>()
                    .prop_filter("finite", |v| v.is_finite())
                    .prop_map(|v| serde_json::to_string(&v).unwrap()),
            ),
            nullable((-1.0e6f32..1.0e6f32).prop_map(|v| serde_json::to_string(&v).unwrap())),
            nullable(prop_oneof![
                decimal(),
                decimal().prop_map(|d| json_string(&d))
            ]),
        ),
        (
            nullable(text()),
            nullable("[a-z ]{0,40}".prop_map(|s| json_string(&s))),
            nullable(any::<bool>().prop_map(|b| b.to_string())),
            json_value(),
            json_value(),
        ),
        (
            nullable(array(text())),
            nullable(array(decimal())),
            nullable(array(any::<i64>().prop_map(|v| v.to_string()))),
            nullable(
                any::<u128>().prop_map(|v| json_string(&uuid::Uuid::from_u128(v).to_string())),
            ),
            nullable(
                (1i32..=9999, 1u32..=12, 1u32..=28)
                    .prop_map(|(y, m, d)| json_string(&format!("{y:04}-{m:02}-{d:02}"))),
            ),
            nullable((0i64..4_000_000_000).prop_map(|s| {
                json_string(&chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339())
            })),
        ),
    )
        .prop_map(
            |((i2, i4, i8, f8, f4, num), (t, vc, b, j, js), (ta, na, ia, u, d, ts))| {
                vec![
                    i2, i4, i8, f8, f4, num, t, vc, b, j, js, ta, na, ia, u, d, ts,
                ]
            },
        )
}

const NAMES: [&str; 17] = [
    "i2", "i4", "i8", "f8", "f4", "num", "t", "vc", "b", "j", "js", "ta", "na", "ia", "u", "d",
    "ts",
];

#[sqlx::test]
async fn random_rows_round_trip_exactly_as_postgres_stores_them(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn(&connect).await;
    app.sql(&format!(
        "CREATE TABLE rt_sink ({COLUMNS}); CREATE TABLE rt_twin ({COLUMNS});"
    ))
    .await;
    let response = app
        .put_job(
            "rt",
            json!({"tasks": ["t0"], "sink": {"table": "rt_sink", "mode": "append"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let epoch = app.epoch("rt").await;

    let cases: usize = std::env::var("ROUNDTRIP_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(12);
    let strategy = proptest::collection::vec(row(), 1..20);
    let mut runner = TestRunner::default();
    let mut next_id = 0;
    for case in 0..cases {
        let batch = strategy.new_tree(&mut runner).unwrap().current();
        let rows: Vec<String> = batch
            .iter()
            .map(|values| {
                next_id += 1;
                let fields: Vec<String> = NAMES
                    .iter()
                    .zip(values)
                    .map(|(name, value)| format!("\"{name}\": {value}"))
                    .collect();
                format!("{{\"id\": {next_id}, {}}}", fields.join(", "))
            })
            .collect();
        let body = format!(
            "{{\"task_id\": \"t0\", \"epoch\": {epoch}, \"batch_id\": \"b{case}\", \"rows\": [{}]}}",
            rows.join(",\n")
        );
        let response = app
            .http
            .post(app.url("/v1/jobs/rt/writes"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{text}\nbatch: {body}");
        for row in &rows {
            sqlx::query(
                "INSERT INTO rt_twin SELECT * FROM json_populate_record(NULL::rt_twin, $1::json)",
            )
            .bind(row)
            .execute(&app.db)
            .await
            .unwrap_or_else(|error| panic!("the twin refused {row}: {error}"));
        }
        let checkpoint = app.checkpoint("rt", epoch).await;
        assert_eq!(
            app.ack_ok("rt", checkpoint, "t0", epoch, json!({"0": case}))
                .await,
            "committed"
        );
        let differences: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT sr::text, tw::text FROM rt_sink sr FULL JOIN rt_twin tw USING (id)
             WHERE sr::text IS DISTINCT FROM tw::text ORDER BY id LIMIT 5",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        assert!(
            differences.is_empty(),
            "stored (sinkgate, postgres) differ: {differences:#?}\nbatch: {body}"
        );
    }
    assert_eq!(app.count("rt_sink").await, next_id);
    app.stop().await;
}
