//! The command-line client (`sinkgate jobs|checkpoints|recovery|tokens`), run
//! as the real binary against a running service with authentication on, the
//! way an operator uses it: tables on stdout, `--json` for scripts, refusals
//! on stderr with exit status 1.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use helpers::TestApp;
use serde_json::{json, Value};
use sinkgate::auth::AuthMode;
use sinkgate::ServiceOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

const ADMIN: &str = "cli-test-admin-token";

struct Cli {
    url: String,
}

impl Cli {
    /// Runs `sinkgate <args>` with `token`, feeding `stdin`.
    fn run_as(&self, token: &str, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sinkgate"))
            .args(args)
            .env("SINKGATE_URL", &self.url)
            .env("SINKGATE_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs as admin and returns stdout, failing on a non-zero exit.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run_as(ADMIN, args, "");
        assert!(
            output.status.success(),
            "sinkgate {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Runs as `token`, expects exit status 1, returns stderr.
    fn refused(&self, token: &str, args: &[&str], stdin: &str) -> String {
        let output = self.run_as(token, args, stdin);
        assert_eq!(
            output.status.code(),
            Some(1),
            "sinkgate {args:?} should fail"
        );
        assert!(output.stdout.is_empty(), "nothing on stdout when refused");
        String::from_utf8(output.stderr).unwrap()
    }
}

#[sqlx::test]
async fn an_operator_manages_jobs_checkpoints_and_tokens(
    _: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_with(
        &connect,
        ServiceOptions {
            auth: AuthMode::Enabled {
                admin_token: ADMIN.into(),
                protect_operations: false,
            },
            ..helpers::options()
        },
    )
    .await;
    app.sql("CREATE TABLE counts (word text PRIMARY KEY, n bigint NOT NULL)")
        .await;
    app.sql("CREATE TABLE words (word text NOT NULL)").await;
    let url = app.base.clone();
    let cli = Cli { url: url.clone() };

    // The CLI is blocking; run it off the runtime that serves.
    let cli = std::sync::Arc::new(cli);
    let blocking = |f: Box<dyn FnOnce(&Cli) + Send>| {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || f(&cli))
    };

    blocking(Box::new(|cli| {
        let spec = json!({"job_id": "wc", "tasks": ["t0", "t1"],
                          "sink": {"table": "counts", "mode": "upsert", "key": ["word"]}});
        let output = cli.run_as(ADMIN, &["jobs", "apply", "-f", "-"], &spec.to_string());
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let shown = String::from_utf8(output.stdout).unwrap();
        assert!(shown.starts_with("job wc applied"), "{shown}");
        assert!(shown.contains("public.counts (upsert, key word)"), "{shown}");

        // A job of several outputs shows each.
        let spec = json!({"job_id": "two", "tasks": ["t0"], "outputs": [
            {"name": "words", "table": "words", "mode": "append"},
            {"name": "counts", "table": "counts", "mode": "upsert", "key": ["word"], "partial_updates": true}]});
        let output = cli.run_as(ADMIN, &["jobs", "apply", "-f", "-"], &spec.to_string());
        assert!(output.status.success());
        let shown = String::from_utf8(output.stdout).unwrap();
        assert!(shown.contains("output words    public.words (append)"), "{shown}");
        assert!(
            shown.contains("output counts   public.counts (upsert, key word, partial updates)"),
            "{shown}"
        );
        cli.ok(&["jobs", "delete", "two"]);

        let listed = cli.ok(&["jobs", "list"]);
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "JOB",
                "TASKS",
                "SINK",
                "MODE",
                "EPOCH",
                "COMMITTED",
                "PENDING"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["wc", "2", "public.counts", "upsert", "0", "-", "-"]
        );
        assert_eq!(cli.json(&["jobs", "list"])["jobs"][0]["job_id"], "wc");

        // A job file without its id is refused before anything is sent.
        let error = cli.refused(ADMIN, &["jobs", "apply", "-f", "-"], r#"{"tasks": ["a"]}"#);
        assert!(error.contains("\"job_id\""), "{error}");
    }))
    .await
    .unwrap();

    // A checkpoint that a task never acks, aborted by the operator.
    let processor = sinkgate_client::Client::new(&[url.as_str()], "wc").with_token(ADMIN);
    let epoch = processor.start_attempt().await.unwrap().epoch;
    processor.trigger(epoch).await.unwrap();

    blocking(Box::new(|cli| {
        let pending = cli.ok(&["checkpoints", "list", "wc", "--status", "pending"]);
        let row: Vec<&str> = pending.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            &row[..5],
            ["1", "1", "pending", "manual", "0/2"],
            "{pending}"
        );

        let aborted = cli.ok(&["checkpoints", "abort", "wc", "--reason", "t1 is stuck"]);
        assert!(
            aborted.contains("aborted by an operator: t1 is stuck"),
            "{aborted}"
        );
        let shown = cli.json(&["checkpoints", "show", "wc", "1"]);
        assert_eq!(shown["status"], "aborted");
        assert_eq!(shown["acks"].as_array().unwrap().len(), 2);
        assert_eq!(
            cli.ok(&["checkpoints", "abort", "wc"]).trim(),
            "job wc has no pending checkpoint"
        );
        assert!(cli
            .ok(&["recovery", "wc"])
            .starts_with("no checkpoint decided yet"));

        // Tokens: issued once, listed without secrets, limited to their job.
        let issued = cli.json(&["tokens", "create", "wc", "--label", "ci"]);
        let (token_id, token) = (
            issued["token_id"].as_str().unwrap().to_owned(),
            issued["token"].as_str().unwrap().to_owned(),
        );
        let listed = cli.ok(&["tokens", "list", "wc"]);
        assert!(
            listed.contains(&token_id) && listed.contains("ci"),
            "{listed}"
        );
        assert!(!listed.contains(&token), "secrets are never listed");
        let error = cli.refused(&token, &["jobs", "list"], "");
        assert!(error.starts_with("error: Forbidden"), "{error}");
        assert_eq!(
            cli.ok(&["tokens", "revoke", "wc", &token_id]).trim(),
            format!("token {token_id} of job wc revoked")
        );
        let error = cli.refused(&token, &["jobs", "show", "wc"], "");
        assert!(error.starts_with("error: Unauthenticated"), "{error}");
    }))
    .await
    .unwrap();

    // Savepoints: a committed checkpoint kept, listed, restored, deleted.
    let epoch = processor.start_attempt().await.unwrap().epoch;
    let checkpoint = processor.trigger(epoch).await.unwrap().checkpoint_id;
    for task in ["t0", "t1"] {
        let ack = sinkgate_client::model::AckRequest {
            task_id: task.into(),
            epoch,
            offsets: [(task.to_owned(), 7)].into(),
            state: None,
        };
        processor.ack(checkpoint, &ack).await.unwrap();
    }
    blocking(Box::new(move |cli| {
        let taken = cli.ok(&["savepoints", "create", "wc", "--label", "v1"]);
        assert_eq!(
            taken.trim(),
            format!("savepoint \"v1\" keeps checkpoint {checkpoint} of job wc")
        );
        let listed = cli.ok(&["savepoints", "list", "wc"]);
        let row: Vec<&str> = listed.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            &row[..2],
            [checkpoint.to_string().as_str(), "v1"],
            "{listed}"
        );
        let restored = cli.ok(&["savepoints", "restore", "wc", &checkpoint.to_string()]);
        assert!(restored.contains("offsets t0=7 t1=7"), "{restored}");
        cli.ok(&["savepoints", "delete", "wc", &checkpoint.to_string()]);
        assert_eq!(
            cli.json(&["savepoints", "list", "wc"]),
            serde_json::json!([])
        );

        assert_eq!(cli.ok(&["jobs", "delete", "wc"]).trim(), "job wc deleted");
        let error = cli.refused(ADMIN, &["jobs", "show", "wc"], "");
        assert!(error.contains("job \"wc\" does not exist"), "{error}");
    }))
    .await
    .unwrap();

    app.stop().await;
}
