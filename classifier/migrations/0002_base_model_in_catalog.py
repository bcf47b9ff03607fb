from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0001_initial'),
        ('classifier', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='classifiertask',
                    name='base_model',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                            related_name='classifier_tasks', to='catalog.basemodel'),
                ),
            ],
            database_operations=[],
        ),
    ]
