//! `dataflow --url <database> models | migrate status | audit`: the
//! registry, the history and the audit log from the database alone,
//! without the application's binary.
//! Planning and applying need the compiled models: embed the CLI in the
//! application with `dataflow::cli::run(&db)`.
//! `dataflow monitor --url http://host:port`: the live metrics view of a
//! running nexus.

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    // `monitor --url` names a running nexus, not a database.
    if args.get(1).map(String::as_str) == Some("monitor") {
        std::process::exit(dataflow::cli::monitor_from(args).await);
    }
    let url = match args.iter().position(|a| a == "--url") {
        Some(i) if i + 1 < args.len() => {
            let url = args.remove(i + 1);
            args.remove(i);
            url
        }
        _ => {
            std::env::var("DATAFLOW_DATABASE_URL").unwrap_or_else(|_| "sqlite://dataflow.db".into())
        }
    };
    let code = match dataflow::DataFlow::open_for_tools(&url).await {
        Ok(db) => dataflow::cli::run_from(&db, args).await,
        Err(e) => {
            eprintln!("error[{}]: {}", e.code(), e.message());
            i32::from(e.code().exit_code())
        }
    };
    std::process::exit(code);
}
