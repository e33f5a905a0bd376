//! One model at two points in its life, to try the migration CLI on.
//!
//! ```sh
//! cargo run --example schema_evolution -- --url sqlite://evolve.db --schema v1          # boot: creates `articles`
//! cargo run --example schema_evolution -- --url sqlite://evolve.db --schema v2 migrate plan
//! cargo run --example schema_evolution -- --url sqlite://evolve.db --schema v2 migrate apply --allow data_loss --reason "summary replaces body" --staging
//! cargo run --example schema_evolution -- --url sqlite://evolve.db --schema v2 migrate status
//! ```
//!
//! v2 adds a nullable `summary` (safe) and drops `body` (data loss): a plain
//! boot of v2 stops with an error that names the drop and the command to
//! review it. `migrate …` commands boot with `auto_migrate(false)`, so the
//! CLI can show and apply what a plain boot refuses.

use dataflow::{DataFlow, Model, ModelSchema};
use serde_json::json;

mod v1 {
    #[dataflow::model(table = "articles")]
    pub struct Article {
        pub id: String,
        pub title: String,
        pub body: Option<String>,
    }
}

mod v2 {
    #[dataflow::model(table = "articles")]
    pub struct Article {
        pub id: String,
        pub title: String,
        pub summary: Option<String>,
    }
}

static V1: ModelSchema = <v1::Article as Model>::SCHEMA;
static V2: ModelSchema = <v2::Article as Model>::SCHEMA;

fn take(args: &mut Vec<String>, flag: &str, default: &str) -> String {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            v
        }
        _ => default.to_string(),
    }
}

#[tokio::main]
async fn main() {
    // dataflow's spans and events (slow queries, `echo`) under RUST_LOG,
    // e.g. `RUST_LOG=dataflow=info`; nothing is printed without it.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args: Vec<String> = std::env::args().collect();
    let url = take(&mut args, "--url", "sqlite://evolve.db");
    let schema = take(&mut args, "--schema", "v1");
    let model: &'static ModelSchema = if schema == "v2" { &V2 } else { &V1 };
    let cli = args.len() > 1;
    let db = match DataFlow::builder(&url)
        .models(&[model])
        .auto_migrate(!cli)
        .build()
        .await
    {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error[{}]: {}", e.code(), e.message());
            std::process::exit(i32::from(e.code().exit_code()));
        }
    };
    if cli {
        std::process::exit(dataflow::cli::run_from(&db, args).await);
    }
    let rec = db
        .execute(
            "ArticleCreateNode",
            json!({"title": format!("written with {schema}")}),
        )
        .await
        .expect("create");
    println!("created {}", rec);
    let count = db
        .execute("ArticleCountNode", json!({}))
        .await
        .expect("count");
    println!("articles: {}", count["count"]);
}
