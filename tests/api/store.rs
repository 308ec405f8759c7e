//! Which store the suite runs against: SQLite by default, PostgreSQL when `REEMBED_TEST_STORE`
//! is `postgres` (`scripts/test.sh` runs the suite both ways). On PostgreSQL each test's data
//! directory is paired with a database of its own on the server at
//! `REEMBED_TEST_DATABASE_URL`, created the first time the directory is served and found again
//! on a restart, as a restarted replica finds its database.

use std::path::Path;

use sqlx::{Connection, PgConnection};

/// The file in a test's data directory naming its PostgreSQL database.
const DATABASE_FILE: &str = "postgres-url";

/// Whether the suite runs against PostgreSQL.
pub fn on_postgres() -> bool {
    match std::env::var("REEMBED_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("REEMBED_TEST_STORE is sqlite or postgres, not {other}"),
    }
}

/// The URL of the database that belongs to `data_dir`, created on first use.
pub async fn database_of(data_dir: &Path) -> String {
    let file = data_dir.join(DATABASE_FILE);
    if let Ok(url) = std::fs::read_to_string(&file) {
        return url;
    }
    let server = std::env::var("REEMBED_TEST_DATABASE_URL").expect(
        "REEMBED_TEST_STORE=postgres needs REEMBED_TEST_DATABASE_URL, a PostgreSQL server with \
         pgvector; scripts/test.sh starts one and sets both",
    );
    let name = format!("reembed_api_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("connect to REEMBED_TEST_DATABASE_URL");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let (base, _) = server
        .rsplit_once('/')
        .expect("a URL ending in a database name");
    let url = format!("{base}/{name}");
    std::fs::write(&file, &url).expect("remember the test database");
    url
}

/// The config `TestApp` serves on `data_dir`: SQLite in it, or its PostgreSQL database.
pub async fn config_in(data_dir: &Path) -> reembed::Config {
    let mut config = reembed::Config::new(data_dir);
    if on_postgres() {
        let url = database_of(data_dir).await;
        config.database_url = Some(reembed::config::DatabaseUrl(url));
    }
    config
}

/// The `reembed serve` flags naming the store of `data_dir`, as `config_in` does.
pub async fn store_flags(data_dir: &Path) -> Vec<std::ffi::OsString> {
    let mut flags = vec!["--data-dir".into(), data_dir.into()];
    if on_postgres() {
        flags.push("--database-url".into());
        flags.push(database_of(data_dir).await.into());
    }
    flags
}
