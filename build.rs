fn main() {
    // Embedded migrations: a new migration directory must trigger a rebuild.
    println!("cargo:rerun-if-changed=migrations");
}
