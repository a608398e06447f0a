fn main() {
    println!("snaprtcd {}", env!("CARGO_PKG_VERSION"));
}
