#[dataflow::model]
pub struct Pair(pub String, pub i32);

fn main() {}
