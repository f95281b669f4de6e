// The migrations are compiled into the server (`sqlx::migrate!`): a new or
// changed migration file must rebuild it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
