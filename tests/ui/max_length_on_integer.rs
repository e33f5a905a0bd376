#[dataflow::model]
pub struct Product {
    pub id: i64,
    #[field(max_length = 10)]
    pub stock: i32,
}

fn main() {}
