//! `myelin`: the command line. `serve` (the default) runs the homeserver; `generate-config`
//! prints a commented example configuration; `check-config` validates one; `register-user`
//! and `delete-media` do an operator's chores on the database. A configuration
//! problem exits with status 2 and one line naming the key, before anything is written.

use std::{path::PathBuf, process::ExitCode};

/// mimalloc instead of the C library's allocator: each password hash takes a 19 MiB block on a
/// blocking thread, and glibc kept those blocks after use (RSS 15 MiB idle, about 900 MiB after
/// 50 registrations); mimalloc hands freed memory back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use myelin_service::config::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "myelin", version, about = "A Matrix homeserver")]
struct Cli {
    /// Configuration file (TOML). Without it: ./myelin.toml if present, else defaults; either way
    /// MYELIN_* environment variables apply on top.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the homeserver (the default).
    Serve,
    /// Print a commented example configuration.
    GenerateConfig,
    /// Load and validate the configuration, then exit: 0 if usable, 2 if not.
    CheckConfig,
    /// Create a local account directly in the database (the server may be running).
    RegisterUser {
        /// The localpart (`alice` for `@alice:server`).
        #[arg(long, short)]
        username: String,
        /// The password; read from the first line of standard input when omitted.
        #[arg(long, short)]
        password: Option<String>,
        /// Make the account a server administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Delete media: local uploads and cached copies of other servers' media, by id, by age,
    /// or both. Thumbnails go with their media, and content files once no media id names
    /// them. Safe while the server runs.
    DeleteMedia {
        /// A media id of this server, or an `mxc://` URI of this server (an upload) or of
        /// another (the cached copy; fetched again on the next request) (repeatable).
        #[arg(long = "id", value_name = "MEDIA_ID")]
        ids: Vec<String>,
        /// Every local media id created, and every cached remote media fetched, more than
        /// this many days ago (0: everything until now).
        #[arg(long, value_name = "DAYS")]
        older_than_days: Option<u64>,
    },
}

/// Exit status for an unusable configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::GenerateConfig = command {
        print!("{}", myelin::EXAMPLE_CONFIG);
        return ExitCode::SUCCESS;
    }
    let path = cli.config.or_else(myelin::config::default_path);
    let config = match myelin::config::load(path.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("myelin: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match command {
        Command::CheckConfig => {
            println!("configuration OK (server_name = {})", config.server_name);
            ExitCode::SUCCESS
        }
        Command::RegisterUser {
            username,
            password,
            admin,
        } => register_user(config, username, password, admin),
        Command::DeleteMedia {
            ids,
            older_than_days,
        } => delete_media(config, ids, older_than_days),
        Command::Serve | Command::GenerateConfig => serve(config),
    }
}

fn serve(config: myelin_service::Config) -> ExitCode {
    init_logging(&config.log.filter, config.log.format);
    // Test builds only (see the function): nothing in a release build.
    myelin_service::operations::failpoints_from_env();
    myelin::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("myelin: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // The signal handlers are installed while the server starts, not after: a SIGTERM sent
        // as soon as the server answers (a supervisor, a test) must not kill it uncleanly.
        let signalled = tokio::spawn(myelin::server::shutdown_signal());
        let server = myelin::server::start(config).await?;
        let stop = server.stop_handle();
        tokio::spawn(async move {
            let _ = signalled.await;
            let _ = stop.send(true);
        });
        server.wait().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("myelin: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn register_user(
    config: myelin_service::Config,
    username: String,
    password: Option<String>,
    admin: bool,
) -> ExitCode {
    let password = match password {
        Some(password) => password,
        None => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() || line.trim_end().is_empty() {
                eprintln!("myelin: no --password given and none on standard input");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("myelin: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let services = myelin_service::Services::start(config).await?;
        let registered = services
            .accounts
            .register(myelin_service::accounts::RegistrationRequest {
                username: Some(username),
                password: Some(password),
                inhibit_login: true,
                admin,
                ..Default::default()
            })
            .await;
        services.shutdown().await;
        anyhow::Ok(registered?)
    });
    match result {
        Ok(registered) => {
            println!("registered {}", registered.user_id);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("myelin: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn delete_media(
    config: myelin_service::Config,
    ids: Vec<String>,
    older_than_days: Option<u64>,
) -> ExitCode {
    if ids.is_empty() && older_than_days.is_none() {
        eprintln!("myelin: say what to delete: --id MEDIA_ID and/or --older-than-days DAYS");
        return ExitCode::from(EXIT_CONFIG);
    }
    let (mut media_ids, mut remote_ids) = (Vec::new(), Vec::new());
    for id in ids {
        match media_id_to_delete(&config.server_name, &id) {
            Some((None, media_id)) => media_ids.push(media_id),
            Some((Some(origin), media_id)) => remote_ids.push((origin, media_id)),
            None => {
                eprintln!("myelin: `{id}` is not a media id of this server or an mxc:// URI");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("myelin: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let services = myelin_service::Services::start(config).await?;
        let media = &services.media;
        let deleted: myelin_service::Result<u64> = async {
            let mut count = media.delete(&media_ids).await?;
            count += media.delete_remote(&remote_ids).await?;
            if let Some(days) = older_than_days {
                let age =
                    i64::try_from(days.saturating_mul(24 * 60 * 60 * 1000)).unwrap_or(i64::MAX);
                let before = myelin_service::now_millis().saturating_sub(age);
                count += media.delete_created_before(before).await?;
                count += media.delete_remote_fetched_before(before).await?;
            }
            Ok(count)
        }
        .await;
        services.shutdown().await;
        anyhow::Ok(deleted?)
    });
    match result {
        Ok(count) => {
            println!("deleted {count} media");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("myelin: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `--id` names: a local media id (a bare id, or an `mxc://` URI of this server), or an
/// `mxc://` URI of another server (`Some(origin)`).
fn media_id_to_delete(
    server_name: &ruma::ServerName,
    id: &str,
) -> Option<(Option<String>, String)> {
    let Some(uri) = id.strip_prefix("mxc://") else {
        return myelin_service::media::is_valid_media_id(id).then(|| (None, id.to_owned()));
    };
    let (origin, media_id) = uri.split_once('/')?;
    let origin = <&ruma::ServerName>::try_from(origin).ok()?;
    if !myelin_service::media::is_valid_media_id(media_id) {
        return None;
    }
    let origin = (origin != server_name).then(|| origin.to_string());
    Some((origin, media_id.to_owned()))
}

fn init_logging(filter: &str, format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
