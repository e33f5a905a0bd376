#[dataflow::model]
pub struct Tag {
    pub label: String,
}

fn main() {}
