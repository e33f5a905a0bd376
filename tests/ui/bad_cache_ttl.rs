#[dataflow::model(cache_ttl = "soon")]
pub struct User {
    pub id: String,
}

fn main() {}
