#[dataflow::model]
pub struct Token {
    pub id: Option<String>,
    pub value: String,
}

fn main() {}
